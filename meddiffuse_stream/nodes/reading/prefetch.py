"""Read-ahead of whole shards in a background thread, so reading and hashing overlap decoding.

The worker's main thread decodes the samples of one shard while this thread fetches the next (read with retries,
hash-checked: :func:`.shard_stream.fetch_shard`). Work that holds the GIL (parsing) stays
out of this thread: see :class:`~meddiffuse_stream.nodes.reading.shard_stream.FetchedShard`.

Each fetch runs in a daemon thread of its own, not a ``ThreadPoolExecutor``: the executor's threads are joined at
interpreter exit, so a fetch in its retry back-off (up to minutes) held the whole process up after training ended.
"""

from __future__ import annotations

import concurrent.futures
import threading
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
        self._open = bool(prefetchable)

    def get(self, index: int) -> Any:
        future = self._pending.pop(index, None)
        loaded = future.result() if future is not None else self._fetch(index)
        self._schedule_after(index)
        return loaded

    def _schedule_after(self, index: int) -> None:
        position = self._position.get(index)
        if not self._open or position is None:
            return
        for upcoming in self._order[position + 1 : position + 1 + self._depth]:
            if upcoming in self._prefetchable and upcoming not in self._pending:
                self._pending[upcoming] = self._submit(upcoming)

    def _submit(self, index: int) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                loaded = self._fetch(index)
            except BaseException as error:  # handed to whoever opens the shard
                future.set_exception(error)
                return
            future.set_result(loaded)
            if not self._open:  # closed while fetching: nobody will take it
                loaded.close()

        threading.Thread(target=run, name=f"shard-prefetch-{index}", daemon=True).start()
        return future

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        for future in self._pending.values():
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().close()
        self._pending.clear()
        self._open = False
