"""How batches travel from a worker process to the loader: a one-way pipe the loader alone reads.

Not a ``multiprocessing.Queue``: its pipe's write end stays open in the reading process too, so a worker that dies
in the middle of a large message (a batch is one array of megabytes; writes of more than 4 KiB are not atomic)
leaves the reader blocked forever on the rest. Here the loader closes its copy of the write end once the worker
has started: a worker's death is an end of file, never a hang. In the worker a sender thread writes, so the worker
keeps producing while a batch is on its way; ``put`` waits in bounded steps for one of ``capacity`` slots.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

__all__ = ["BatchReceiver", "BatchSender", "WorkerGone", "batch_channel"]


class WorkerGone(EOFError):
    """The worker's end of the channel closed: the worker process ended."""


class BatchSender:
    """The worker's end: ``put(item, timeout)`` (``queue.Full`` when no slot freed in time)."""

    def __init__(self, connection: Any, capacity: int) -> None:
        self._connection = connection
        self._capacity = capacity
        self._slots: queue.Queue | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_connection": self._connection, "_capacity": self._capacity, "_slots": None}

    def put(self, item: Any, timeout: float) -> None:
        if self._slots is None:  # started in the worker, after the fork
            self._slots = queue.Queue(self._capacity)
            threading.Thread(target=self._send, name="meddiffuse-batch-sender", daemon=True).start()
        self._slots.put(item, timeout=timeout)

    def _send(self) -> None:
        while True:
            item = self._slots.get()  # type: ignore[union-attr]
            try:
                self._connection.send(item)
            except OSError:  # the loader closed its end: nobody reads any more
                return


class BatchReceiver:
    """The loader's end: ``get(timeout)`` raises ``queue.Empty`` after ``timeout``, :class:`WorkerGone` at EOF."""

    def __init__(self, connection: Any, writer: Any) -> None:
        self._connection = connection
        self._writer = writer  # the parent's copy of the write end, closed once the worker holds its own

    def worker_started(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get(self, timeout: float) -> Any:
        if not self._connection.poll(timeout):
            raise queue.Empty
        try:
            return self._connection.recv()
        except (EOFError, OSError) as error:  # OSError: it ended in the middle of a message
            raise WorkerGone("the worker's end of the batch channel closed") from error

    def close(self) -> None:
        self.worker_started()
        self._connection.close()


def batch_channel(context: Any, capacity: int) -> tuple[BatchSender, BatchReceiver]:
    """A worker's sender and the loader's receiver over one ``context.Pipe``."""
    reader, writer = context.Pipe(duplex=False)
    return BatchSender(writer, capacity), BatchReceiver(reader, writer)
