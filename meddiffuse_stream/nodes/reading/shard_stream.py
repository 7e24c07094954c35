"""Loading one shard so that nothing of it is used before it is checked: read, verified, parsed, counted.

A shard is read whole — into memory, or into a temporary file when it is larger than ``memory_limit`` — with
retries, then its sha256 (when the dataset lists one) and its real sample count are checked against the dataset's
record, and only then are its samples handed on. So ``on_error="skip"`` skips a bad shard whole and
``on_error="raise"`` raises before any of its samples is yielded. Hashing happens on bytes already read (one read
per shard; a local shard over ``memory_limit`` is hashed in a first pass, then parsed from the page cache); a shard
from the local cache was verified on its way in and is not hashed again, nor is a local file this process has
verified and that has not changed since (:mod:`.verified`; counted as ``shards_unchanged``). A gzip-compressed
shard is kept as stored (and hashed so): it is decompressed once to count its samples, then again as they stream.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np

from ...counters import Counters
from ...shardfmt.compressed import is_gzip
from ...shardfmt.tar import MAX_MEMBER_BYTES, RawSample, TarProblem, count_samples, iter_samples
from ...storage import ResumableReader, RetryPolicy, ShardCache, ShardIntegrityError, object_reader
from ...storage.local_files import open_regular
from ...storage.object_stream import open_object
from ...storage.shard_cache import object_identity
from ..source import DatasetSource
from .layouts import plain_samples
from .verified import already_verified, remember_verified

__all__ = ["DEFAULT_MEMORY_LIMIT", "FetchedShard", "LoadedShard", "fetch_shard", "open_shard"]

DEFAULT_MEMORY_LIMIT = 256 << 20
_PIECE = 8 << 20


class LoadedShard:
    """A checked shard: its items (one per sample position, then perhaps a fatal problem), in shard order.

    ``samples`` is the same items as a sequence when the shard was parsed in memory (the common case): the reader
    then takes each planned sample by its position instead of walking to it.
    """

    def __init__(
        self,
        items: Iterator[RawSample | TarProblem] | None = None,
        spill: BinaryIO | None = None,
        samples: Sequence[RawSample | TarProblem] | None = None,
    ) -> None:
        if (items is None) == (samples is None):
            raise ValueError("LoadedShard takes either a stream of items (spilled) or the parsed list (samples)")
        self.items = items if items is not None else iter(samples)  # type: ignore[arg-type]
        self.samples = samples
        self._spill = spill

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None


def open_shard(
    source: DatasetSource, index: int, *, policy: RetryPolicy, rng: np.random.Generator, counters: Counters
) -> ResumableReader:
    """A retrying stream of shard ``index`` from its start (obstore in worker processes where it may, else fsspec),
    each attempt bounded by the shard's total deadline (:func:`~...storage.object_stream.open_object`)."""
    info = source.shards[index]
    location = source.location
    fast = object_reader.reader_for(location)
    if fast is not None:
        counters.add(f"shards_via_{fast.name}")
    return open_object(
        location,
        info.path,
        size=info.bytes,
        policy=policy,
        rng=rng,
        on_retry=lambda _: counters.add("retries"),
        what=source.describe(index),
        fast=fast,
    )


def _read_all(stream: Any) -> bytes:
    parts: list[bytes] = []
    try:
        while chunk := stream.read(-1 if not parts else _PIECE):
            parts.append(chunk)
    finally:
        stream.close()
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _spill_to_file(stream: Any, head: bytes = b"") -> tuple[BinaryIO, str]:
    """A shard too large for memory (``head`` already read), into an anonymous temporary file; ``(file, sha256)``."""
    spill = tempfile.TemporaryFile()
    digest = hashlib.sha256(head)
    try:
        spill.write(head)
        while chunk := stream.read(_PIECE):
            spill.write(chunk)
            digest.update(chunk)
    except BaseException:
        spill.close()
        raise
    finally:
        stream.close()
    spill.seek(0)
    return spill, digest.hexdigest()


def _read_bounded(
    stream: Any, known_size: int | None, memory_limit: int
) -> tuple[bytes | None, BinaryIO | None, str | None]:
    """``(data, None, None)`` in memory, or ``(None, file, sha256)`` spilled when the shard proves too large.

    With a known size that fits, the whole object comes in one read (obstore hands it over at once); with an
    unknown one it is read in pieces and moved to a temporary file once it outgrows ``memory_limit``.
    """
    if known_size is not None:
        if known_size > memory_limit:
            return (None, *_spill_to_file(stream))
        return _read_all(stream), None, None
    parts: list[bytes] = []
    have = 0
    while chunk := stream.read(_PIECE):
        parts.append(chunk)
        have += len(chunk)
        if have > memory_limit:
            return (None, *_spill_to_file(stream, b"".join(parts)))
    stream.close()
    return b"".join(parts), None, None


def _file_sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_PIECE):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


def _check(what: str, expected_sha: str | None, actual_sha: str | None, origin: str) -> None:
    if expected_sha is not None and actual_sha is not None and actual_sha != expected_sha:
        raise ShardIntegrityError(
            f"{what}: sha256 mismatch (expected {expected_sha}, got {actual_sha}); the shard changed after "
            f"{origin} was written: re-run meddiffuse-stream shard (or index)"
        )


def _check_count(what: str, found: int, listed: int, whole: bool, origin: str) -> None:
    if found > listed or (whole and found != listed):
        raise ShardIntegrityError(
            f"{what}: holds {found} samples, {origin} lists {listed}; the shard and its record "
            "disagree: re-run meddiffuse-stream shard (or index)"
        )


class FetchedShard:
    """A shard's bytes, read and hash-checked but not parsed yet: what the read-ahead thread hands over.

    Parsing holds the GIL for the whole shard; done in the read-ahead thread it fought the decoding thread for it
    at every decode (pyspng and numpy release the GIL, the parser takes it, the decoder waits to get it back): at
    64 px that cost ~25 µs of CPU a sample, more than parsing itself. So the thread only reads and hashes (both
    release the GIL) and :meth:`parse` runs where the samples are used.
    """

    def __init__(
        self,
        what: str,
        origin: str,
        listed: int,
        data: bytes | None,
        spill: BinaryIO | None,
        max_member_bytes: int,
        sha256: str | None = None,
    ) -> None:
        self.what, self.origin, self.listed = what, origin, listed
        self._data, self._spill = data, spill
        self.max_member_bytes = max_member_bytes
        self.sha256 = sha256  # what the bytes were checked against (None: not checked)

    def parse(self, rows: bool = False) -> LoadedShard:
        """The checked shard: :class:`ShardIntegrityError` if its sample count is not the listed one. ``rows``: a
        plain shard's samples as :class:`~meddiffuse_stream.nodes.reading.plain_rows.PlainRows` where they can be."""
        data, spill, self._data, self._spill = self._data, self._spill, None, None
        if data is None and spill is None:
            raise RuntimeError(f"{self.what}: parsed twice or after close()")
        try:
            if data is not None and is_gzip(data[:2]):  # streamed, never decompressed whole into memory
                found, problem = count_samples(io.BytesIO(data), self.max_member_bytes)
                _check_count(self.what, found, self.listed, problem is None, self.origin)
                return LoadedShard(iter_samples(io.BytesIO(data), self.max_member_bytes))
            if data is not None:
                # the same samples, faster, when nothing is odd; parsed once per process for checked bytes
                items: Sequence[RawSample | TarProblem] | None = plain_samples(
                    data, self.max_member_bytes, self.sha256, rows
                )
                if items is None:
                    items = list(iter_samples(io.BytesIO(data), self.max_member_bytes))
                del data
                # a plain shard served as rows holds no problem (and is not built by looking at its last sample)
                fatal = type(items) is list and bool(items) and isinstance(items[-1], TarProblem) and items[-1].fatal
                _check_count(self.what, len(items) - fatal, self.listed, not fatal, self.origin)
                return LoadedShard(samples=items)
            assert spill is not None
            found, problem = count_samples(spill, self.max_member_bytes)
            _check_count(self.what, found, self.listed, problem is None, self.origin)
            spill.seek(0)
            return LoadedShard(iter_samples(spill, self.max_member_bytes), spill)
        except BaseException:
            if spill is not None:
                spill.close()
            raise

    def close(self) -> None:
        """Frees the bytes (or the temporary file) of a shard nobody will parse."""
        if self._spill is not None:
            self._spill.close()
        self._data = self._spill = None


def fetch_shard(
    source: DatasetSource,
    index: int,
    *,
    policy: RetryPolicy,
    rng: np.random.Generator,
    counters: Counters,
    cache: ShardCache | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> FetchedShard:
    """Read shard ``index`` and check its sha256 (:class:`ShardIntegrityError`); the sample count is checked by
    :meth:`FetchedShard.parse`, which gives the loaded shard."""
    info = source.shards[index]
    what = source.describe(index)
    origin = source.origin
    location = source.location
    spill: BinaryIO | None = None
    data: bytes | None = None
    actual: str | None = None
    cached = cache is not None and cache.usable  # verified on the way into the cache, counted there
    if cached:
        data, spill = _through_cache(source, index, cache, policy, rng, counters, memory_limit)  # type: ignore[arg-type]
    elif location.is_local:  # a FIFO or a link out of the root (swapped in since the plan): refused, never opened
        handle = open_regular(location.checked_path(info.path, confined=source.confined), what)
        stat = os.fstat(handle.fileno())
        unchanged = info.sha256 is not None and already_verified(stat, info.sha256)  # hashed before, same file
        if stat.st_size > memory_limit:
            spill = handle
            actual = _file_sha256(handle) if info.sha256 is not None and not unchanged else None
        else:
            with handle:
                data = handle.read()
            actual = hashlib.sha256(data).hexdigest() if info.sha256 is not None and not unchanged else None
        if unchanged:
            actual = info.sha256
            counters.add("shards_unchanged")
        elif actual is not None and actual == info.sha256:
            remember_verified(stat, actual)
    else:
        stream = open_shard(source, index, policy=policy, rng=rng, counters=counters)
        data, spill, actual = _read_bounded(stream, info.bytes, memory_limit)
        if info.sha256 is None:
            actual = None
        elif data is not None:
            actual = hashlib.sha256(data).hexdigest()
    try:
        _check(what, info.sha256, actual, origin)
    except BaseException:
        if spill is not None:
            spill.close()
        raise
    if not cached:
        counters.add("shards_verified" if actual is not None else "shards_unverified")
    checked = info.sha256 if cached or actual is not None else None  # a cached shard was checked on its way in
    return FetchedShard(what, origin, info.samples, data, spill, max_member_bytes, checked)


def _through_cache(
    source: DatasetSource,
    index: int,
    cache: ShardCache,
    policy: RetryPolicy,
    rng: np.random.Generator,
    counters: Counters,
    memory_limit: int,
) -> tuple[bytes | None, BinaryIO | None]:
    """The shard from the cache (verified when it went in), else fetched, verified and put in the cache.

    A cache that cannot be written (full disk, read-only folder) warns once and the shard is used from memory.
    """
    info = source.shards[index]
    what = source.describe(index)
    identity = info.sha256 or object_identity(source.location, info.path)
    if identity is None:  # no stamp that changes with the object: never cached, so never served stale
        stream = open_shard(source, index, policy=policy, rng=rng, counters=counters)
        data, spill, _ = _read_bounded(stream, info.bytes, memory_limit)
        counters.add("shards_unverified")
        return data, spill
    cached = cache.lookup(identity)
    if cached is not None:
        counters.add("cache_hits")
        handle = open(cached, "rb")
        if os.fstat(handle.fileno()).st_size > memory_limit:
            return None, handle
        with handle:
            return handle.read(), None
    counters.add("cache_misses")
    stream = open_shard(source, index, policy=policy, rng=rng, counters=counters)
    data, spill, actual = _read_bounded(stream, info.bytes, memory_limit)
    # a stock shard's identity was read before its bytes: it is kept only if still the same after them (an object
    # replaced in between would otherwise be kept under its old identity)
    keep = info.sha256 is not None or object_identity(source.location, info.path) == identity
    if spill is not None:
        _check(what, info.sha256, actual, source.origin)
        counters.add("shards_verified" if info.sha256 is not None else "shards_unverified")
        if keep and cache.store_file(identity, spill) is None:
            counters.add("cache_write_failures")
        spill.seek(0)
        return None, spill
    assert data is not None
    _check(what, info.sha256, hashlib.sha256(data).hexdigest(), source.origin)
    counters.add("shards_verified" if info.sha256 is not None else "shards_unverified")
    if keep and cache.store(identity, data) is None:
        counters.add("cache_write_failures")
    return data, None
