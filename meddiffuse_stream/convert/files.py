"""Shared pieces of the formats whose inputs are files: unique keys, and loading by path."""

from __future__ import annotations

import argparse
import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any

from ..shardfmt.writer import make_key
from ..storage import Location
from .base import DEFAULT_RULES, LoadedImage, ReadRules, SourceFormat, SourceItem
from .images import load_file_bytes
from .scan import read_input

__all__ = ["IMAGE_SUFFIXES", "FileSource", "KeyAllocator"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


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

    apply_window: bool = True  # DICOM inputs: apply the VOI LUT / window when the file has a usable one

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {**super().cli_fields(args), "apply_window": not args.no_window}

    def load_one(self, src: Location, item: SourceItem, rules: ReadRules = DEFAULT_RULES) -> LoadedImage:
        data = read_input(src, item.ref, rules, item.size_hint or None)
        return load_file_bytes(data, posixpath.basename(item.ref), apply_window=self.apply_window, rules=rules)
