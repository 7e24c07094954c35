"""Where datasets live: any fsspec URL (local path, ``file://``, ``s3://``, ``gs://``, ``memory://``).

Credentials come from ``storage_options`` or the usual environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``) and are never logged or written into a dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "Location",
    "atomic_write",
    "parse_storage_options",
    "sha256_of",
]

_HASH_CHUNK = 1 << 20


def parse_storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["endpoint_url=http://127.0.0.1:8333", "anon=false"]`` → a dict with booleans and numbers parsed."""
    options: dict[str, Any] = {}
    for position, pair in enumerate(pairs or [], start=1):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--storage-option number {position} is not NAME=VALUE (e.g. "
                             "endpoint_url=http://host:8333); its text is not shown, it may be a secret")  # fmt: skip
        lowered = value.lower()
        if lowered in ("true", "false"):
            options[name] = lowered == "true"
        else:
            try:
                options[name] = int(value)
            except ValueError:
                options[name] = value
    return options


class Location:
    """A directory on some filesystem, with the few operations the project needs, picklable for workers."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = root.rstrip("/") or root

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]

    def __repr__(self) -> str:  # storage options may hold secrets: never shown
        return f"Location({self.url!r})"

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str = "") -> str:
        """Filesystem path of ``relative`` below the root (``/`` separated on every filesystem)."""
        return posixpath.join(self.root, relative) if relative else self.root

    def display(self, relative: str = "") -> str:
        """A user-facing name for ``relative``: the URL the user gave, joined."""
        return f"{self.url.rstrip('/')}/{relative}" if relative else self.url

    def open(self, relative: str, mode: str = "rb") -> Any:
        return self.fs.open(self.path(relative), mode)

    def exists(self, relative: str) -> bool:
        return bool(self.fs.exists(self.path(relative)))

    def size(self, relative: str) -> int:
        return int(self.fs.size(self.path(relative)))

    def read_bytes(self, relative: str) -> bytes:
        if self.is_local:  # the variant cache reads many small files: skip fsspec's per-call path handling
            with open(self.path(relative), "rb") as stream:
                return stream.read()
        return bytes(self.fs.cat_file(self.path(relative)))

    def write_bytes(self, relative: str, data: bytes) -> None:
        with atomic_write(self, relative) as stream:
            stream.write(data)

    def makedirs(self, relative: str = "") -> None:
        if self.is_local:
            os.makedirs(self.path(relative), exist_ok=True)
        else:
            with contextlib.suppress(FileExistsError):
                self.fs.makedirs(self.path(relative), exist_ok=True)

    def remove(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(relative))

    def list_files(self, relative: str = "") -> list[str]:
        """Every file below ``relative``, as paths relative to the root, sorted."""
        return sorted(self.file_sizes(relative))

    def file_sizes(self, relative: str = "") -> dict[str, int]:
        """``{relative path: bytes}`` for every file below ``relative`` (one listing, also on object stores)."""
        base = self.path(relative)
        if not self.fs.exists(base):
            return {}
        prefix = self.root.rstrip("/") + "/"
        found = self.fs.find(base, detail=True)
        return {
            path[len(prefix) :]: int(info.get("size") or 0)
            for path, info in sorted(found.items())
            if path.startswith(prefix) and info.get("type", "file") == "file"
        }


@contextlib.contextmanager
def atomic_write(location: Location, relative: str) -> Iterator[BinaryIO]:
    """Write a file that appears whole or not at all.

    Local files go to a temporary name and are renamed; object stores commit an object only when its upload
    completes, so there the final key is written directly (a copy-and-delete rename would double the traffic).
    """
    target = location.path(relative)
    if not location.is_local:
        with location.fs.open(target, "wb") as stream:
            yield stream
        return
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def sha256_of(location: Location, relative: str) -> str:
    """sha256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with location.open(relative) as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
