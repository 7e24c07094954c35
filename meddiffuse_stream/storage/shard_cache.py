"""A bounded local cache of whole shards: content-addressed by sha256, verified on the way in, LRU, persistent.

Entries are named by the sha256 that ``dataset.json`` (or a shard index) records, written to a temporary name and
renamed only once complete (the bytes were verified before they are stored), so an entry is trusted from then on —
across restarts and between worker processes sharing the folder. A stock shard with no recorded sha256 is named by
the object's identity as its store reports it now (:func:`object_identity`: URL, size and ETag or modification
time, version): a replaced object has a new identity and is fetched again, never served stale. Least recently used
entries are evicted when the folder grows past its size limit.

A cache that cannot be written — a full disk, a read-only folder — is not an error: it warns once (per process),
stops trying, and shards are streamed instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .location import Location

__all__ = ["DEFAULT_CACHE_BYTES", "ShardCache", "ShardIntegrityError", "object_identity"]

# what stores call an object's version stamp: S3 (ETag, LastModified, VersionId), GCS (etag, generation,
# updated), Azure (etag, last_modified), local files (ino, mtime, and ctime as fsspec gives it: "created")
_STAMPS = (
    "ETag",
    "etag",
    "md5Hash",
    "VersionId",
    "version_id",
    "generation",
    "LastModified",
    "last_modified",
    "updated",
    "mtime",
    "ino",
    "created",
)

DEFAULT_CACHE_BYTES = 50 << 30  # the shard cache's default size limit

_CHUNK = 1 << 20
_warned: set[str] = set()  # cache folders this process has already warned about


class ShardIntegrityError(OSError):
    """A shard's bytes are not what its dataset lists: another sha256, or another number of samples."""


def object_identity(location: Location, relative: str) -> str | None:
    """A cache name for the object ``relative`` as it is now: the sha256 of its URL, size and version stamps, read
    fresh (one metadata request, under the location's retry policy); None where the store gives no stamp that
    changes with the content (such a shard is not cached)."""
    path = location.path(relative)

    def stat() -> dict[str, Any]:
        with contextlib.suppress(Exception):
            location.fs.invalidate_cache(path)  # a listing kept from before must not answer for it
        return dict(location.fs.info(path))

    info = location.retrying(stat, relative)
    stamps = [f"{name}={info[name]}" for name in _STAMPS if info.get(name) not in (None, "")]
    if not stamps:
        return None
    text = "|".join([location.display(relative), f"size={info.get('size')}", *stamps])
    return hashlib.sha256(text.encode()).hexdigest()


class ShardCache:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache size limit must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.usable = True
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.evict()  # a smaller limit than last time applies at once
        except OSError as error:
            self.disable(error)

    def disable(self, error: BaseException) -> None:
        """Stop using the cache (it cannot be written); one warning per folder and process."""
        self.usable = False
        if str(self.directory) not in _warned:
            _warned.add(str(self.directory))
            warnings.warn(
                f"shard cache {self.directory} cannot be written ({type(error).__name__}: {error}); shards are "
                "streamed without it from now on (free space or pick another cache_dir)",
                RuntimeWarning,
                stacklevel=3,
            )

    def entry(self, identity: str) -> Path:
        return self.directory / f"{identity}.tar"

    def lookup(self, identity: str) -> Path | None:
        """The cached file for ``identity``, marked as just used; ``None`` on a miss."""
        path = self.entry(identity)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError:  # a read-only cache still serves what it holds
            return path if path.exists() else None
        return path

    def store(self, identity: str, data: bytes) -> Path | None:
        """Keep ``data`` (already verified) as the entry for ``identity``; ``None`` if the cache cannot be written."""
        return self._store(identity, lambda stream: stream.write(data))

    def store_file(self, identity: str, source: BinaryIO) -> Path | None:
        """Like :meth:`store`, copying from an open file (rewound first and after)."""
        source.seek(0)
        try:
            return self._store(identity, lambda stream: shutil.copyfileobj(source, stream, _CHUNK))
        finally:
            source.seek(0)

    def _store(self, identity: str, write: Callable[[BinaryIO], object]) -> Path | None:
        if not self.usable:
            return None
        target = self.entry(identity)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        try:
            with open(temporary, "wb") as stream:
                write(stream)
            os.replace(temporary, target)
        except OSError as error:  # ENOSPC, EROFS, EACCES, EFBIG, EDQUOT: stream instead
            self.disable(error)
            return None
        finally:
            with contextlib.suppress(OSError):
                os.remove(temporary)
        with contextlib.suppress(OSError):
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
