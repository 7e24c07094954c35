"""One object read from storage, whole or from an offset, with a total deadline and resumable retries.

:func:`open_object` is how the loader reads a shard: obstore where :mod:`.object_reader` allows it, else the
location's fsspec filesystem. On object stores every GET is bounded by the policy's total deadline for the bytes
it fetches (:meth:`~.retry.RetryPolicy.object_timeout`), not only by the read timeout between bytes, so a server
that trickles the body cannot hold a reader for an hour: the deadline passes, the read is retried (and counted)
from where it stopped, and after the policy's attempts it is an error naming the endpoint and the settings. As
every other request to the location (:meth:`.location.Location.guarded`), an endpoint that never answered is not
retried when it refuses, and a failure of the user's settings is one line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .location import Location
from .retry import ObjectDeadlineError, ResumableReader, RetryPolicy

__all__ = ["RangeBody", "open_object"]


class RangeBody:
    """A read-only stream over one object of an async fsspec filesystem (s3fs, gcsfs): each read is one ranged
    GET bounded by what is left of the deadline (fsspec cancels the request when it passes)."""

    def __init__(self, fs: Any, path: str, offset: int, size: int, policy: RetryPolicy, what: str) -> None:
        self._fs, self._path, self._at, self._size = fs, path, offset, size
        self._policy, self._what = policy, what
        self._seconds = policy.object_timeout(size - offset)
        self._deadline = time.monotonic() + self._seconds

    def read(self, size: int = -1) -> bytes:
        if self._at >= self._size:
            return b""
        end = self._size if size is None or size < 0 else min(self._size, self._at + size)
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._missed()
        from fsspec.exceptions import FSTimeoutError

        try:
            data = self._fs.cat_file(self._path, start=self._at, end=end, timeout=left)
        except FSTimeoutError:
            raise self._missed() from None
        self._at += len(data)
        return bytes(data)

    def _missed(self) -> ObjectDeadlineError:
        return ObjectDeadlineError(self._what, self._seconds, self._size, self._policy)

    def close(self) -> None:
        self._at = self._size


def open_object(
    location: Location,
    relative: str,
    *,
    size: int | None,
    policy: RetryPolicy,
    rng: np.random.Generator,
    on_retry: Callable[[BaseException], None] | None = None,
    what: str | None = None,
    fast: Any = None,
) -> ResumableReader:
    """A retrying stream of ``relative`` from its start: obstore (``fast``, from :func:`object_reader.reader_for`)
    or fsspec; on object stores each attempt has the object's total deadline. ``size`` (bytes) when known, else it
    is asked once."""
    path = location.path(relative)
    shown = what or location.display(relative)
    bounded = getattr(location.fs, "async_impl", False) and not location.is_local
    known: list[int | None] = [size]

    def total() -> int:
        size = known[0]
        if size is None:
            size = known[0] = location.size(relative)
        return size

    def open_at(offset: int) -> Any:
        if fast is not None:
            return fast.open(path, offset, known[0])
        if bounded:
            return RangeBody(location.fs, path, offset, total(), policy, shown)
        stream = location.fs.open(path, "rb")
        if offset:
            stream.seek(offset)
        return stream

    if location.is_local:
        return ResumableReader(open_at, what=shown, policy=policy, rng=rng, on_retry=on_retry, hint=location.endpoint)
    return ResumableReader(
        open_at,
        what=shown,
        policy=policy,
        rng=rng,
        on_retry=on_retry,
        hint=location.endpoint,
        transient=location.transient,
        guard=lambda read: location.guarded(read, relative),
    )
