"""Opening one shard for sequential reading: through the local cache, or streamed with retries and hashing."""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO

import numpy as np

from .. import object_reader
from ..counters import Counters
from ..retry import ResumableReader, RetryPolicy
from ..shard_cache import ShardCache, ShardIntegrityError
from .source import DatasetSource

__all__ = ["HashingStream", "open_shard"]

_COPY_CHUNK = 1 << 20


class HashingStream:
    """Hashes what is read; :meth:`verify` drains the rest of the shard and compares with the expected sha256."""

    def __init__(self, stream: Any, expected: str | None, what: str) -> None:
        self._stream = stream
        self._expected = expected
        self._what = what
        self._digest = hashlib.sha256()
        self.bytes_read = 0

    @property
    def raw(self) -> Any:
        """The stream below the hashing (for readers that hash elsewhere)."""
        return self._stream

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._digest.update(data)
        self.bytes_read += len(data)
        return data

    def verify(self) -> None:
        while self.read(_COPY_CHUNK):
            pass
        if self._expected is not None and self._digest.hexdigest() != self._expected:
            raise ShardIntegrityError(
                f"{self._what}: sha256 mismatch (expected {self._expected}, got {self._digest.hexdigest()}); "
                "the shard changed after dataset.json was written: re-run meddiffuse-stream shard"
            )

    def close(self) -> None:
        self._stream.close()


def open_shard(
    source: DatasetSource,
    index: int,
    *,
    policy: RetryPolicy,
    rng: np.random.Generator,
    counters: Counters,
    cache: ShardCache | None = None,
) -> HashingStream:
    """A readable stream of shard ``index``; its ``verify()`` checks the sha256 once the shard is read whole."""
    info = source.shards[index]
    what = source.describe(index)
    location = source.location
    path = location.path(info.path)

    def count_retry(_: BaseException) -> None:
        counters["retries"] += 1

    fast = object_reader.reader_for(location)
    if fast is not None:
        counters[f"shards_via_{fast.name}"] += 1

    def open_at(offset: int) -> Any:
        if fast is not None:
            return fast.open(path, offset, info.bytes)
        stream = location.fs.open(path, "rb")
        if offset:
            stream.seek(offset)
        return stream

    remote = ResumableReader(open_at, what=what, policy=policy, rng=rng, on_retry=count_retry)
    if cache is None:
        return HashingStream(remote, info.sha256, what)
    identity = info.sha256 or hashlib.sha256(location.display(info.path).encode()).hexdigest()
    cached = cache.lookup(identity)
    if cached is not None:
        counters["cache_hits"] += 1
    else:
        counters["cache_misses"] += 1

        def fill(target: BinaryIO) -> None:
            with remote:
                while chunk := remote.read(_COPY_CHUNK):
                    target.write(chunk)

        try:
            cached = cache.insert(identity, fill, info.sha256)
        except ShardIntegrityError as error:
            raise ShardIntegrityError(f"{what}: {error}") from error
    return HashingStream(open(cached, "rb"), None, what)  # verified on the way into the cache
