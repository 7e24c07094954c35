"""Read-ahead of whole shards in a background thread, so reading, hashing and parsing overlap decoding.

The worker's main thread decodes the samples of one shard while this thread loads the next (read with retries,
verified, parsed: :func:`~meddiffuse_stream.nodes.shard_stream.load_shard`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

__all__ = ["ShardPrefetcher"]


class ShardPrefetcher:
    """Serves shards in the order a worker will open them, fetching up to ``depth`` of them ahead."""

    def __init__(self, fetch: Callable[[int], Any], order: list[int], prefetchable: set[int], depth: int = 1) -> None:
        self._fetch = fetch
        self._order = order
        self._position = {shard: position for position, shard in enumerate(order)}  # get() is per shard: O(1)
        self._prefetchable = prefetchable
        self._depth = depth
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch") if prefetchable else None
        )

    def get(self, index: int) -> Any:
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
