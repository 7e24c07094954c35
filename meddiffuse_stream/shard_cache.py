"""A bounded local cache of whole shards: content-addressed by sha256, verified on the way in, LRU, persistent.

Entries are named by the sha256 that ``dataset.json`` records, written to a temporary name and renamed only when
the bytes hash right, so an entry is trusted from then on — across restarts and between worker processes sharing
the folder. Least recently used entries are evicted when the folder grows past its size limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["ShardCache", "ShardIntegrityError"]

_CHUNK = 1 << 20


class ShardIntegrityError(OSError):
    """A shard's bytes do not hash to the sha256 its ``dataset.json`` lists."""


class ShardCache:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 50 << 30) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache size limit must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.evict()  # a smaller limit than last time applies at once

    def entry(self, identity: str) -> Path:
        return self.directory / f"{identity}.tar"

    def lookup(self, identity: str) -> Path | None:
        """The cached file for ``identity``, marked as just used; ``None`` on a miss."""
        path = self.entry(identity)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def insert(self, identity: str, fill: Callable[[BinaryIO], None], expected_sha256: str | None) -> Path:
        """Write an entry through ``fill``; keep it only if it hashes to ``expected_sha256`` (when known)."""
        target = self.entry(identity)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        try:
            with open(temporary, "wb") as stream:
                fill(stream)
            if expected_sha256 is not None:
                actual = _sha256_file(temporary)
                if actual != expected_sha256:
                    raise ShardIntegrityError(f"sha256 mismatch: expected {expected_sha256}, got {actual}")
            os.replace(temporary, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        self.evict(keep=target)
        return target

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*.tar"))

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used entries until the folder fits; returns how many were removed."""
        entries = []
        for path in self.directory.glob("*.tar"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
            total -= size
        return removed


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
