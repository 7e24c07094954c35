"""The batch message between a worker process and the loader: pickle protocol 5 with its large buffers outside.

Arrays in the worker's shared segments (:mod:`.segments`, where the default chain decodes
into) travel as ``(segment id, offset, length)`` — the segment's descriptor follows the first message that uses
it — and the loader reads them where they are, nothing copied; other large buffers (a user's ``collate_fn``
output) are copied once into a segment; small ones stay inside the pickle. Only the loader's own worker
processes write these messages: nothing from a shard is ever unpickled.

Layout: ``counts (new segments, buffers, retired)``, ``(id, size)`` per new segment (its descriptor, in order,
follows the message), ``(id, offset, length)`` per buffer, the retired ids, then the pickle.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from .segments import SegmentMaps, SegmentPool

__all__ = ["COPY_THRESHOLD", "pack", "unpack"]

COPY_THRESHOLD = 256 << 10  # smaller buffers are cheaper inside the pickle than in a segment
_COUNTS = struct.Struct("!III")
_NEW = struct.Struct("!QQ")
_BUFFER = struct.Struct("!QQQ")
_RETIRED = struct.Struct("!Q")


def pack(item: Any, pool: SegmentPool | None = None) -> tuple[bytes, list[Any]]:
    """``(message, segments whose descriptors must follow it)``; without a ``pool`` a plain pickle."""
    new: list[Any] = []
    buffers: list[tuple[int, int, int]] = []

    def place(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        exporter = memoryview(buffer).obj
        claimed = pool.claim(exporter) if isinstance(exporter, np.ndarray) else None  # type: ignore[union-attr]
        if claimed is None:
            if raw.nbytes < COPY_THRESHOLD:
                return True  # inside the pickle
            copy = pool.empty((raw.nbytes,), np.uint8)  # type: ignore[union-attr]
            copy[:] = np.frombuffer(raw, np.uint8)
            claimed = pool.claim(copy)  # type: ignore[union-attr]
            assert claimed is not None
        ident, offset, segment, first = claimed
        if first:
            new.append((ident, segment))
        buffers.append((ident, offset, raw.nbytes))
        return False

    payload = pickle.dumps(item, protocol=5, buffer_callback=place if pool is not None else None)
    retired = pool.take_retired() if pool is not None else []
    header = [_COUNTS.pack(len(new), len(buffers), len(retired))]
    header += [_NEW.pack(ident, len(segment)) for ident, segment in new]
    header += [_BUFFER.pack(*entry) for entry in buffers]
    header += [_RETIRED.pack(ident) for ident in retired]
    return b"".join(header) + payload, [segment for _, segment in new]


def unpack(message: bytes, maps: SegmentMaps, receive_fds: Callable[[int], list[int]]) -> Any:
    """The item of ``message``; ``receive_fds(count)`` takes the descriptors that followed it."""
    count, buffer_count, retired_count = _COUNTS.unpack_from(message)
    position = _COUNTS.size
    new = []
    for _ in range(count):
        new.append(_NEW.unpack_from(message, position))
        position += _NEW.size
    entries = []
    for _ in range(buffer_count):
        entries.append(_BUFFER.unpack_from(message, position))
        position += _BUFFER.size
    retired = []
    for _ in range(retired_count):
        retired.append(_RETIRED.unpack_from(message, position)[0])
        position += _RETIRED.size
    fds = receive_fds(count) if count else []
    if len(fds) != count:
        raise OSError(f"a batch message announced {count} shared segments and brought {len(fds)}")
    for index, ((ident, size), fd) in enumerate(zip(new, fds, strict=True)):
        try:
            maps.add(ident, fd, size)  # closes the descriptor, also when it fails
        except BaseException:
            for rest in fds[index + 1 :]:
                os.close(rest)
            raise
    maps.retire(retired)
    roots = {ident: maps.root(ident) for ident in {entry[0] for entry in entries}}
    views = [roots[ident][offset : offset + nbytes] for ident, offset, nbytes in entries]
    # Trusted: written by this loader's own worker process over a private socket pair (as multiprocessing's
    # queues are); shard bytes reach it only as arrays and JSON-parsed values, never as a pickle.
    return pickle.loads(memoryview(message)[position:], buffers=views)
