"""Read-ahead of whole shards from object storage in a background thread, so network latency overlaps decoding.

Only remote shards small enough to hold in memory are fetched ahead (``max_bytes``); local files and larger shards
stream as before. The fetched bytes are hashed again while they are parsed, so verification is unchanged.

Each fetch runs in a daemon thread of its own, not a ``ThreadPoolExecutor``: the executor's threads are joined at
interpreter exit, so a fetch in its retry back-off (up to minutes) held the whole process up after training ended.
"""

from __future__ import annotations

import concurrent.futures
import io
import threading
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
        self._open = bool(prefetchable)

    def get(self, index: int) -> HashingStream:
        future = self._pending.pop(index, None)
        stream = future.result() if future is not None else self._fetch(index)
        self._schedule_after(index)
        return stream

    def _schedule_after(self, index: int) -> None:
        position = self._position.get(index)
        if not self._open or position is None:
            return
        for upcoming in self._order[position + 1 : position + 1 + self._depth]:
            if upcoming in self._prefetchable and upcoming not in self._pending:
                self._pending[upcoming] = self._submit(upcoming)

    def _submit(self, index: int) -> concurrent.futures.Future[HashingStream]:
        future: concurrent.futures.Future[HashingStream] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                stream = self._fetch(index)
            except BaseException as error:  # handed to whoever opens the shard
                future.set_exception(error)
                return
            future.set_result(stream)
            if not self._open:  # closed while fetching: nobody will take it
                stream.close()

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
