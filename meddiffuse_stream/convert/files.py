"""Shared pieces of the formats whose inputs are files: listing, unique keys, and loading by path."""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

from ..shardfmt.writer import make_key
from ..storage import Location
from .base import LoadedImage, SourceFormat, SourceItem
from .images import load_file_bytes

__all__ = ["IMAGE_SUFFIXES", "FileSource", "KeyAllocator", "is_hidden", "list_inputs"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


def is_hidden(path: str) -> bool:
    """Dot-files (``.DS_Store``, editor backups) are not inputs."""
    return any(part.startswith(".") for part in path.split("/"))


def list_inputs(src: Location, relative: str = "") -> dict[str, int]:
    """Visible files below ``relative`` with their sizes; fails clearly when the folder does not exist."""
    if not src.exists(relative):
        raise ValueError(f"{src.display(relative)} does not exist: check the SRC argument")
    return {p: s for p, s in src.file_sizes(relative).items() if not is_hidden(p)}


class KeyAllocator:
    """Hands out unique sample keys; a collision after sanitising gets a short hash of the source path."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def __call__(self, source: str, *parts: str) -> str:
        key = make_key(*parts)
        if key in self._taken:
            key = make_key(key[:77], hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12])
        if key in self._taken:
            raise ValueError(f"two inputs give the same sample key {key!r}; one of them is {source}")
        self._taken.add(key)
        return key


@dataclass(frozen=True)
class FileSource(SourceFormat):
    """A format whose item ``ref`` is a file path on the source filesystem."""

    apply_window: bool = True  # DICOM inputs: apply the VOI LUT / window when the file has one

    def load_one(self, src: Location, item: SourceItem) -> LoadedImage:
        data = src.read_path(item.ref)  # bounded and retried by the location's RetryPolicy
        return load_file_bytes(data, posixpath.basename(item.ref), apply_window=self.apply_window)
