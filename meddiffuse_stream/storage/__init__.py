"""Where bytes live and how they are fetched: locations (local paths and fsspec URLs), bounded retries, object
reads and the local shard cache. Nothing here imports torch or knows the shard format."""

from __future__ import annotations

from .errors import StorageAccessError, StorageError, StorageNotFoundError, StorageUnreachableError
from .local_files import OutsideRootError, SpecialFileError
from .location import Location, atomic_write, bounded_options, parse_storage_options, sha256_of
from .retry import ResumableReader, RetryPolicy, ShardReadError, is_transient
from .shard_cache import DEFAULT_CACHE_BYTES, ShardCache, ShardIntegrityError

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "Location",
    "OutsideRootError",
    "ResumableReader",
    "RetryPolicy",
    "ShardCache",
    "ShardIntegrityError",
    "ShardReadError",
    "SpecialFileError",
    "StorageAccessError",
    "StorageError",
    "StorageNotFoundError",
    "StorageUnreachableError",
    "atomic_write",
    "bounded_options",
    "is_transient",
    "parse_storage_options",
    "sha256_of",
]
