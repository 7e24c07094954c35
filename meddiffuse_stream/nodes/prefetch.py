"""Read-ahead of whole shards from object storage in a background thread, so network latency overlaps decoding.

Only remote shards small enough to hold in memory are fetched ahead (``max_bytes``); local files and larger shards
stream as before. The fetched bytes are hashed again while they are parsed, so verification is unchanged.
"""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Callable

from .shard_stream import HashingStream

__all__ = ["ShardPrefetcher", "read_into_memory"]

_PIECE = 1 << 20


def read_into_memory(stream: HashingStream, expected: str | None, what: str) -> HashingStream:
    """All of ``stream`` (with its retries), as a fresh in-memory stream that hashes what the parser reads.

    The bytes are taken from below the hashing layer in one request: they are hashed once, while parsed.
    """
    raw = stream.raw
    try:
        parts = []
        while chunk := raw.read(-1 if not parts else _PIECE):
            parts.append(chunk)
    finally:
        stream.close()
    return HashingStream(io.BytesIO(b"".join(parts) if len(parts) > 1 else (parts or [b""])[0]), expected, what)


class ShardPrefetcher:
    """Serves shards in the order a worker will open them, fetching up to ``depth`` of them ahead."""

    def __init__(self, fetch: Callable[[int], HashingStream], order: list[int], prefetchable: set[int], depth: int = 1):
        self._fetch = fetch
        self._order = order
        self._position = {shard: position for position, shard in enumerate(order)}  # get() is per shard: O(1)
        self._prefetchable = prefetchable
        self._depth = depth
        self._pending: dict[int, concurrent.futures.Future[HashingStream]] = {}
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch") if prefetchable else None
        )

    def get(self, index: int) -> HashingStream:
        future = self._pending.pop(index, None)
        stream = future.result() if future is not None else self._fetch(index)
        self._schedule_after(index)
        return stream

    def _schedule_after(self, index: int) -> None:
        position = self._position.get(index)
        if self._pool is None or position is None:
            return
        for upcoming in self._order[position + 1 : position + 1 + self._depth]:
            if upcoming in self._prefetchable and upcoming not in self._pending:
                self._pending[upcoming] = self._pool.submit(self._fetch, upcoming)

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        for future in self._pending.values():
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().close()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
