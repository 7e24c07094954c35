"""How batches travel from a worker process to the loader: a socket pair whose worker end the loader closes.

Not a ``multiprocessing.Queue``: its pipe's write end stays open in the reading process too, so a worker that dies
in the middle of a message leaves the reader blocked forever on the rest. Here the loader closes its copy of the
worker's end once the worker has started: a worker's death is an end of file, never a hang.

A batch is a short message (:mod:`.wire`) and the descriptors of the shared segments its
arrays live in (``SCM_RIGHTS``), so megabytes of pixels are never written through the socket. The other way, the
loader acknowledges each message it took and names the segments it is done with, for the worker to reuse. A
worker sends a batch only while fewer than ``capacity`` are unacknowledged (``put`` waits in bounded steps), so
it reads at most that far ahead — small messages would otherwise pile up in the socket's buffer.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import time
import warnings
from multiprocessing import reduction
from typing import Any

import numpy as np

from .messages import MessageKind, WorkerMessage
from .segments import SegmentMaps, SegmentPool, supported
from .wire import pack, unpack

__all__ = ["BatchReceiver", "BatchSender", "WorkerGone", "batch_channel"]

_ACKS = struct.Struct("!I")  # loader -> worker: messages taken since the last reply, then released segment ids
_IDS = struct.Struct("!Q")


class WorkerGone(EOFError):
    """The worker's end of the channel closed: the worker process ended."""


def _socket_of(connection: Any) -> socket.socket:
    """A socket object on a duplicate of the connection's descriptor (to pass descriptors over it)."""
    return socket.socket(fileno=os.dup(connection.fileno()))


class BatchSender:
    """The worker's end: ``put(item, timeout)`` (``queue.Full`` when the loader has not taken enough in time).
    :meth:`allocate` makes arrays that cross to the loader without a copy (plain ones without segments)."""

    def __init__(self, connection: Any, capacity: int, share: bool) -> None:
        self._connection = connection
        self._capacity = capacity
        self._share = share
        self._socket: socket.socket | None = None
        self._pool: SegmentPool | None = None
        self._unacknowledged = 0

    def __getstate__(self) -> dict[str, Any]:
        return {
            "_connection": self._connection,
            "_capacity": self._capacity,
            "_share": self._share,
            "_socket": None,
            "_pool": None,
            "_unacknowledged": 0,
        }

    def _segments(self) -> SegmentPool | None:
        if self._share and self._pool is None:  # made in the worker, after the fork
            self._pool = SegmentPool(keep=self._capacity + 2)
            self._socket = _socket_of(self._connection)
        return self._pool

    def allocate(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        pool = self._segments()
        if pool is None or not self._share:
            return np.empty(shape, dtype)
        self._read_replies(0.0)  # segments the loader is done with, to reuse
        try:
            return pool.empty(shape, dtype)
        except OSError as error:
            self._stop_sharing(error)
            return np.empty(shape, dtype)

    def _stop_sharing(self, error: OSError) -> None:
        """A segment could not be made (a file-size limit — ``ulimit -f`` applies to memfd too —, no memory for
        tmpfs, no descriptors left): this worker's batches go through its socket from now on, slower, never lost."""
        self._share = False
        warnings.warn(
            f"decode worker {os.getpid()}: shared batch memory unavailable ({type(error).__name__}: "
            f"{error}); its batches are sent through its socket from now on, slower (check `ulimit -f`, "
            "`ulimit -n` and free memory)",
            RuntimeWarning,
            stacklevel=3,
        )

    def _pack(self, item: Any) -> tuple[bytes, list[Any]]:
        if self._share and self._pool is not None:
            try:
                return pack(item, self._pool)
            except OSError as error:  # a large buffer from elsewhere could not get a segment
                self._stop_sharing(error)
        return pack(item)

    def _read_replies(self, timeout: float) -> None:
        """Take the loader's replies that arrive within ``timeout`` (the first one waited for, then those ready)."""
        try:
            while self._connection.poll(timeout):
                reply = self._connection.recv_bytes()
                self._unacknowledged -= _ACKS.unpack_from(reply)[0]
                if self._pool is not None:
                    self._pool.release([ident for (ident,) in _IDS.iter_unpack(memoryview(reply)[_ACKS.size :])])
                timeout = 0.0
        except (EOFError, OSError):
            pass  # the loader went away: put() fails on the send

    def put(self, item: Any, timeout: float) -> None:
        self._segments()
        deadline = time.monotonic() + timeout
        self._read_replies(0.0)
        while self._unacknowledged >= self._capacity:
            left = deadline - time.monotonic()
            if left <= 0:
                raise queue.Full
            self._read_replies(left)
        try:
            message, segments = self._pack(item)
        except Exception as error:  # e.g. a collate_fn result that cannot be pickled: the loader raises it
            failure = f"the batch cannot be sent to the loader: {type(error).__name__}: {error}"
            message, segments = pack(WorkerMessage(item.generation, MessageKind.FAILURE, failure, {}))
        try:
            self._connection.send_bytes(message)
            if segments:
                assert self._socket is not None  # set when the worker started
                reduction.sendfds(self._socket, [s.descriptor.fd for s in segments])
        except OSError:
            return  # the loader closed its end: nobody reads any more (it stops or kills this worker)
        finally:
            for segment in segments:
                segment.descriptor.close()  # the loader has its own now; the mapping stays for reuse
        self._unacknowledged += 1


class BatchReceiver:
    """The loader's end: ``get(timeout)`` raises ``queue.Empty`` after ``timeout``, :class:`WorkerGone` at EOF."""

    def __init__(self, connection: Any, writer: Any) -> None:
        self._connection = connection
        self._writer = writer  # the parent's copy of the worker's end, closed once the worker holds its own
        self._socket = _socket_of(connection)
        self._maps = SegmentMaps()

    def worker_started(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get(self, timeout: float) -> Any:
        self._reply()
        if not self._connection.poll(timeout):
            raise queue.Empty
        try:
            item = unpack(self._connection.recv_bytes(), self._maps, self._receive_fds)
        except (EOFError, OSError) as error:  # OSError: it ended in the middle of a message
            raise WorkerGone("the worker's end of the batch channel closed") from error
        self._reply(taken=1)
        return item

    def _reply(self, taken: int = 0) -> None:
        """Acknowledge ``taken`` messages and release the segments whose last array is gone."""
        released = self._maps.take_releases()
        if taken or released:
            try:
                self._connection.send_bytes(_ACKS.pack(taken) + b"".join(_IDS.pack(ident) for ident in released))
            except OSError:
                pass  # the worker is gone, and its segments with it

    def _receive_fds(self, count: int) -> list[int]:
        try:
            return reduction.recvfds(self._socket, count)
        except RuntimeError as error:  # what multiprocessing raises for a cut-short descriptor message
            raise OSError(str(error)) from error

    def close(self) -> None:
        self.worker_started()
        self._maps.close()
        self._socket.close()
        self._connection.close()


def batch_channel(context: Any, capacity: int, share: bool | None = None) -> tuple[BatchSender, BatchReceiver]:
    """A worker's sender and the loader's receiver over one socket pair; ``share`` (default: where supported)
    puts batch arrays in shared segments."""
    reader, writer = context.Pipe(duplex=True)
    return BatchSender(writer, capacity, supported() if share is None else share), BatchReceiver(reader, writer)
