"""Batch memory shared between a worker process and the loader: anonymous segments, reused.

A worker decodes each batch straight into a segment (``memfd_create``: a file with no name, so nothing is ever
left in ``/dev/shm``) and sends the segment's file descriptor once, the first time the segment is used; the loader
maps it once and hands the arrays on as they are. When the last array on a batch is gone, the loader tells the
worker the segment is free again and the worker decodes its next batch there: fresh pages cost a page fault each
(≈ 100 µs per 224×224 float image on the 2-core machine), reused ones nothing. A batch the caller keeps holds its
segment (the worker makes another); a worker keeps at most ``keep`` free segments and retires the rest. The kernel
frees a segment once its last mapping and descriptor are gone, so a killed worker, a closed loader or a batch of
an abandoned epoch leak nothing, and a batch the caller keeps stays valid after the loader closes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np

__all__ = ["SegmentMaps", "SegmentPool", "attach", "new_segment", "supported"]

_NAME = "meddiffuse-batch"
_ROUND = 1 << 16  # segment sizes in 64 KiB steps, so a slightly smaller batch reuses a larger segment


class _Descriptor:
    """A segment's file descriptor while this process holds it: closed once (when sent, or with the mapping)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc


_LIBC: Any = None


def _unmap(address: int, nbytes: int, descriptor: _Descriptor) -> None:
    _LIBC.munmap(address, nbytes)
    descriptor.close()


def _map(fd: int, nbytes: int, keep_fd: bool) -> Any:
    """A segment as its arrays rest on it: a ctypes array over the mapping (with ``.descriptor``, the descriptor
    while this process holds it, and ``.address``), unmapped when the last array on it is gone.

    Not ``mmap.mmap``: that keeps a duplicate descriptor open per mapping, so a caller keeping a thousand batches
    would run the process out of descriptors. A mapping here holds none.
    """
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
    address = _LIBC.mmap(None, nbytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        error = ctypes.get_errno()
        os.close(fd)
        raise OSError(error, f"cannot map a shared batch segment of {nbytes} bytes: {os.strerror(error)}")
    segment: Any = (ctypes.c_char * nbytes).from_address(address)  # carries its descriptor and address
    segment.descriptor = _Descriptor(fd if keep_fd else None)
    segment.address = address
    if not keep_fd:
        os.close(fd)
    weakref.finalize(segment, _unmap, address, nbytes, segment.descriptor)
    return segment


def supported() -> bool:
    """Segments and descriptor passing exist here (Linux and other Unixes; not Windows)."""
    import socket

    return hasattr(socket, "CMSG_SPACE") and hasattr(os, "ftruncate") and os.name == "posix"


def new_segment(nbytes: int) -> Any:
    """A new segment of ``nbytes`` mapped here, its descriptor open (``segment.descriptor``, to be sent)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(_NAME, os.MFD_CLOEXEC)
    else:  # other Unixes: an unlinked temporary file (in memory where /dev/shm exists)
        fd, path = tempfile.mkstemp(prefix=_NAME, dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.unlink(path)
    try:
        os.ftruncate(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise
    return _map(fd, nbytes, keep_fd=True)


def attach(fd: int, nbytes: int) -> Any:
    """Map a received segment (read and write: the caller may change its batch in place) and close the
    descriptor: the mapping alone keeps the memory, until the last array on it is gone."""
    return _map(fd, nbytes, keep_fd=False)


class SegmentPool:
    """The worker's side: arrays in reusable segments. A segment is *leased* by :meth:`empty`, *sent* by
    :meth:`claim` (the loader owns it until it is :meth:`release`-d) and free again after that — or as soon as
    the worker drops a leased array it did not send. Thread-safe (the sender thread claims); finalizers only
    queue, so garbage collection at any moment cannot deadlock or disturb it."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._segments: dict[int, Any] = {}
        self._lease: dict[int, int] = {}  # segment id -> lease number (one per empty())
        self._free: set[int] = set()
        self._sent: set[int] = set()
        self._announced: set[int] = set()
        self._retired: list[int] = []
        self._dropped: deque[tuple[int, int]] = deque()  # (id, lease) of leased arrays gone, from finalizers
        self._next_id = 0

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array in a free segment that fits (a new one if none does)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes == 0:
            return np.empty(shape, dtype)
        with self._lock:
            self._collect_dropped()
            fitting = [i for i in self._free if len(self._segments[i]) >= nbytes]
            if fitting:
                ident = min(fitting, key=lambda i: len(self._segments[i]))
                self._free.discard(ident)
            else:
                ident, self._next_id = self._next_id, self._next_id + 1
                self._segments[ident] = new_segment(-(-nbytes // _ROUND) * _ROUND)
            lease = self._lease[ident] = self._lease.get(ident, 0) + 1
        root = np.frombuffer(self._segments[ident], np.uint8, count=nbytes)
        weakref.finalize(root, self._dropped.append, (ident, lease))
        return root.view(dtype).reshape(shape)

    def _collect_dropped(self) -> None:
        while self._dropped:
            ident, lease = self._dropped.popleft()
            if self._lease.get(ident) == lease and ident not in self._sent and ident in self._segments:
                self._free.add(ident)  # leased, never sent: nobody else has it

    def claim(self, array: np.ndarray) -> tuple[int, int, Any, bool] | None:
        """``(segment id, byte offset, segment, first time sent)`` for an array leased from this pool and not
        sent yet, which the loader owns from now on; None for any other array."""
        root = _owner(array)
        with self._lock:
            ident = next((i for i, s in self._segments.items() if s is root), None)
            if ident is None or ident in self._free or ident in self._sent:
                return None
            first = ident not in self._announced
            self._sent.add(ident)
            self._announced.add(ident)
            return ident, array.ctypes.data - root.address, root, first

    def release(self, idents: list[int]) -> None:
        """The loader is done with these segments: free them, retiring what is beyond ``keep`` free ones."""
        with self._lock:
            self._collect_dropped()
            for ident in idents:
                if ident in self._sent:
                    self._sent.discard(ident)
                    self._free.add(ident)
            while len(self._free) > self.keep:
                ident = min(self._free, key=lambda i: len(self._segments[i]))  # the smallest: the likeliest unfit
                self._free.discard(ident)
                self._segments.pop(ident).descriptor.close()  # unmapped when the last array on it goes
                self._lease.pop(ident, None)
                if ident in self._announced:
                    self._announced.discard(ident)
                    self._retired.append(ident)

    def take_retired(self) -> list[int]:
        """Segments the loader may unmap (told with the next message)."""
        with self._lock:
            retired, self._retired = self._retired, []
            return retired

    @property
    def sizes(self) -> dict[str, int]:
        """How many segments are free and sent (for tests and diagnostics)."""
        with self._lock:
            self._collect_dropped()
            return {"segments": len(self._segments), "free": len(self._free), "sent": len(self._sent)}


def _owner(array: np.ndarray) -> Any:
    """The object at the bottom of an array's ``base`` chain (through memoryviews): where its memory is."""
    owner: Any = array
    while True:
        if isinstance(owner, np.ndarray) and owner.base is not None:
            owner = owner.base
        elif isinstance(owner, memoryview):
            owner = owner.obj
        else:
            return owner


class SegmentMaps:
    """The loader's side of one worker's segments: mapped once, released when the last array on them is gone."""

    def __init__(self) -> None:
        self._maps: dict[int, Any] = {}
        self.releases: deque[int] = deque()  # appended by finalizers (any thread, any time); sent by the receiver

    def add(self, ident: int, fd: int, nbytes: int) -> None:
        self._maps[ident] = attach(fd, nbytes)

    def retire(self, idents: list[int]) -> None:
        for ident in idents:
            self._maps.pop(ident, None)  # arrays still on it keep the mapping until they go

    def root(self, ident: int) -> np.ndarray:
        """The whole segment as bytes; when it and every array made from it are gone, ``ident`` is released."""
        try:
            segment = self._maps[ident]
        except KeyError:
            raise OSError(f"a batch message names shared segment {ident}, which was never sent") from None
        root = np.frombuffer(segment, np.uint8)
        weakref.finalize(root, self.releases.append, ident)
        return root

    def take_releases(self) -> list[int]:
        taken = []
        while self.releases:
            taken.append(self.releases.popleft())
        return taken

    def close(self) -> None:
        self._maps.clear()
        self.releases.clear()
