"""One conversion per OUT at a time: a lock file ``OUT/.convert.lock`` that a second conversion finds at once.

* Local folders (and network file systems with locking): ``flock`` on the lock file. The kernel drops the lock when
  its process dies, so a lock file left by a crashed run is stale by definition: it is taken over and named.
* Object storage: a lease. The lock object is created with a conditional write (``If-None-Match: *``) and renewed
  every :data:`HEARTBEAT_SECONDS` with ``If-Match`` on its own ETag. A lease not renewed for
  :data:`STALE_AFTER_SECONDS` (by the store's clock) is stale and is taken over with ``If-Match`` on the stale
  ETag, so of two runs racing for it only one wins. A run whose renewal fails has lost its lease and stops before
  writing ``dataset.json``. Stores without conditional writes (not S3) get a best-effort lock: exists, then write.

Whoever holds the lock is described in it (host, pid, start time) so the refusal names the other run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from ..storage import Location
from .base import ConversionError

__all__ = ["HEARTBEAT_SECONDS", "LOCK_NAME", "STALE_AFTER_SECONDS", "OutputLock", "OutputLockedError", "acquire_lock"]

LOCK_NAME = ".convert.lock"
HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 120.0


class OutputLockedError(ConversionError):
    """Another conversion holds OUT, or this one lost its lease."""


def _holder_info() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": uuid.uuid4().hex,
    }


def describe_holder(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "a holder that left no readable description"


class OutputLock:
    """A held lock; ``stale`` names the earlier holder whose lock was taken over, if any."""

    stale: str | None = None

    def verify(self) -> None:
        """Raise :class:`OutputLockedError` unless this run still holds OUT (called before the commit point)."""

    def release(self) -> None:
        """Give OUT back."""

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(out: Location) -> OutputLock:
    """Lock OUT for this run or raise :class:`OutputLockedError` at once, naming the run that holds it."""
    if out.is_local:
        try:
            return _FlockLock(out)
        except _NoFlock:
            pass  # a file system without flock: the lease below works on any storage
    return _LeaseLock(out)


class _NoFlock(Exception):
    pass


class _FlockLock(OutputLock):
    def __init__(self, out: Location) -> None:
        import fcntl

        self._path = out.path(LOCK_NAME)
        while True:
            descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = describe_holder(os.pread(descriptor, 4096, 0))
                os.close(descriptor)
                raise OutputLockedError(
                    f"{out.display()} is being written by another conversion ({holder}); a second conversion into "
                    "the same OUT is refused: wait for it to finish or choose another OUT"
                ) from None
            except OSError as error:
                os.close(descriptor)
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise _NoFlock() from error
                raise
            try:
                same = os.fstat(descriptor).st_ino == os.stat(self._path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file the previous holder unlinked while we waited for it
                break
            os.close(descriptor)
        self._descriptor = descriptor
        previous = os.pread(descriptor, 4096, 0)
        if previous.strip():
            self.stale = describe_holder(previous)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(_holder_info()).encode(), 0)

    def verify(self) -> None:
        try:
            ours = os.stat(self._path).st_ino == os.fstat(self._descriptor).st_ino
        except FileNotFoundError:
            ours = False
        if not ours:
            raise OutputLockedError(
                f"the lock file {self._path} was removed or replaced during the conversion: "
                "another run may be writing OUT; dataset.json is not written"
            )

    def release(self) -> None:
        if self._descriptor < 0:
            return
        with contextlib.suppress(OSError):
            if os.stat(self._path).st_ino == os.fstat(self._descriptor).st_ino:
                os.unlink(self._path)
        os.close(self._descriptor)  # closing drops the flock
        self._descriptor = -1


class _LeaseLock(OutputLock):
    def __init__(self, out: Location) -> None:
        self._out = out
        self._path = out.path(LOCK_NAME)
        self._body = _holder_info()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._etag = self._take()
        self._thread = threading.Thread(target=self._renew_forever, name="convert-lock-heartbeat", daemon=True)
        self._thread.start()

    def _encoded(self) -> bytes:
        return json.dumps({**self._body, "heartbeat": time.time()}).encode()

    def _take(self) -> str | None:
        try:
            return _put(self._out, self._path, self._encoded(), create=True)
        except _ConditionFailed:
            pass
        try:
            raw, etag, age = _read_lease(self._out, self._path)
        except FileNotFoundError:  # released between our two requests: try once more
            try:
                return _put(self._out, self._path, self._encoded(), create=True)
            except _ConditionFailed:
                raw, etag, age = _read_lease(self._out, self._path)
        holder = describe_holder(raw)
        if age < STALE_AFTER_SECONDS:
            raise OutputLockedError(
                f"{self._out.display()} is being written by another conversion ({holder}, last heartbeat "
                f"{age:.0f} s ago); a second conversion into the same OUT is refused. If that run is gone its lock "
                f"goes stale in {STALE_AFTER_SECONDS - age:.0f} s, or delete {self._out.display(LOCK_NAME)}"
            )
        try:
            new_etag = _put(self._out, self._path, self._encoded(), match=etag)
        except _ConditionFailed:
            message = (
                f"{self._out.display()}: another conversion took over the stale lock of {holder} first; "
                "a second conversion into the same OUT is refused"
            )
            raise OutputLockedError(message) from None
        self.stale = f"{holder}, last heartbeat {age:.0f} s ago"
        return new_etag

    def _renew(self) -> None:
        with self._lock:
            if self._lost is not None:
                return
            try:
                self._etag = _put(self._out, self._path, self._encoded(), match=self._etag)
            except _ConditionFailed:
                self._lost = "its lease was taken over by another conversion (this run stalled too long?)"
            except FileNotFoundError:
                self._lost = "its lock object was deleted"

    def _renew_forever(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a network blip: the next beat tries again, staleness decides
                self._renew()

    def verify(self) -> None:
        self._renew()
        if self._lost is not None:
            raise OutputLockedError(
                f"this conversion lost its lock on {self._out.display()}: {self._lost}; dataset.json is not written"
            )

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_SECONDS + 5)
        with self._lock, contextlib.suppress(Exception):
            if self._lost is None:
                _, etag, _ = _read_lease(self._out, self._path)
                if etag is None or etag == self._etag:
                    self._out.fs.rm_file(self._path)


class _ConditionFailed(Exception):
    pass


def _put(out: Location, path: str, data: bytes, *, create: bool = False, match: str | None = None) -> str | None:
    """A conditional write; the new ETag (``None`` where the store has none). Raises :class:`_ConditionFailed`."""
    fs = out.fs
    if type(fs).__module__.startswith("s3fs"):
        try:
            limit = {"timeout": out.retry.write_timeout(len(data))}  # a PUT waits for 100-continue unbounded
            response = (
                fs.pipe_file(path, data, mode="create", **limit)
                if create
                else fs.pipe_file(path, data, IfMatch=match, **limit)
            )
        except FileExistsError:
            raise _ConditionFailed() from None
        except OSError as error:
            code = getattr(error.__cause__, "response", {}).get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise _ConditionFailed() from None
            raise
        etag = response.get("ETag") if isinstance(response, dict) else None
        return etag or fs.info(path).get("ETag")
    # best effort on stores without conditional writes (memory://, ...): check, then write
    exists = fs.exists(path)
    if create and exists:
        raise _ConditionFailed()
    if match is not None:
        if not exists:
            raise FileNotFoundError(path)
        if _etag_of(fs.info(path)) != match:
            raise _ConditionFailed()
    fs.pipe_file(path, data)
    return _etag_of(fs.info(path))


def _etag_of(info: dict[str, Any]) -> str | None:
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation")
    return str(tag) if tag else str(info.get("created") or info.get("mtime") or info.get("size"))


def _read_lease(out: Location, path: str) -> tuple[bytes, str | None, float]:
    """Contents, ETag and age in seconds (store's modification time against this machine's clock)."""
    info = out.fs.info(path)
    raw = out.read_path(path, info.get("size"))  # retried, under the object's total deadline (its size known)
    modified = info.get("LastModified") or info.get("mtime") or info.get("created")
    if isinstance(modified, dt.datetime):
        stamp = modified.timestamp() if modified.tzinfo else modified.replace(tzinfo=dt.timezone.utc).timestamp()
    elif isinstance(modified, (int, float)):
        stamp = float(modified)
    else:
        stamp = json.loads(raw or b"{}").get("heartbeat", 0.0) if raw else 0.0
    return raw, _etag_of(info), max(0.0, time.time() - float(stamp))
