"""Retries for object storage: exponential backoff with seeded jitter, and a reader that resumes where it broke.

Transient failures (connection refused or reset, timeouts, HTTP 5xx, S3 SlowDown) are retried; everything else —
missing objects, bad credentials, permissions — fails at once, so a wrong key never turns into a retry storm. A
caller may narrow what is transient (``transient=``): a location refuses to retry an endpoint that never answered
(:mod:`.contact`).
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StorageError

__all__ = ["ObjectDeadlineError", "ResumableReader", "RetryPolicy", "ShardReadError", "is_transient"]

# an HTTP status in a message: a whole number, so "in 403.357µs" (a request's duration) is not read as 403
_STATUS = r"(?<![\d.]){}(?![\d]|\.\d)"
_TRANSIENT_TEXT = re.compile(
    r"slow ?down|throttl|timed? ?out|timeout|connection (reset|refused|aborted|closed)|server disconnected|"
    r"cannot connect|service unavailable|internal ?error|bad gateway|gateway timeout|"
    + _STATUS.format("50[0-4]")
    + r"|temporarily|too many requests|"
    + _STATUS.format("429")
    + r"|broken pipe|reset by peer|endpoint connection|"
    r"read error|response ended prematurely|payload",
    re.IGNORECASE,
)
_PERMANENT_TEXT = re.compile(
    r"access ?denied|forbidden|" + _STATUS.format("403") + r"|invalidaccesskeyid|signaturedoesnotmatch|"
    r"no ?such ?(key|bucket)|not ?found|" + _STATUS.format("404") + r"|invalid ?bucket|credentials",
    re.IGNORECASE,
)
_TRANSIENT_ERRNO = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EAGAIN,
}


class ShardReadError(OSError):
    """A shard could not be read after the retry budget; the message names the shard and the last error."""


class ObjectDeadlineError(TimeoutError):
    """An object's body did not arrive within its total deadline (:meth:`RetryPolicy.object_timeout`): a
    transient failure, retried and counted like any other."""

    def __init__(self, what: str, seconds: float, size: int, policy: RetryPolicy) -> None:
        super().__init__(
            f"{what}: {size} bytes did not arrive within the object's deadline of {seconds:.0f} s (connect_timeout "
            f"{policy.connect_timeout:g} + read_timeout {policy.read_timeout:g} + the size at "
            f"min_bytes_per_second={policy.min_bytes_per_second:g}); the server sends too slowly"
        )


def is_transient(error: BaseException) -> bool:
    """Whether retrying could help: network trouble and overloaded servers yes, missing or forbidden no."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, StorageError)):
        return False
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    if _PERMANENT_TEXT.search(text):
        return False
    for item in chain:
        if isinstance(item, (ConnectionError, TimeoutError)):
            return True
        if isinstance(item, OSError) and item.errno in _TRANSIENT_ERRNO:
            return True
        if type(item).__module__.split(".")[0] in ("aiohttp", "botocore", "urllib3", "http"):
            if "Connect" in type(item).__name__ or "Timeout" in type(item).__name__ or "Payload" in type(item).__name__:
                return True
    return bool(_TRANSIENT_TEXT.search(text))


@dataclass(frozen=True)
class RetryPolicy:
    """How long object storage may keep the loader waiting, and how often a failed request is tried again.

    Every request has a ``connect_timeout`` and a ``read_timeout`` (seconds without a byte), and every object
    read a total deadline (:meth:`object_timeout`: both timeouts plus its size at ``min_bytes_per_second``), so
    a body that trickles a byte now and then — never idle long enough for the read timeout — is cut off too; a
    transient failure (a missed deadline included) is tried again after ``base * 2**attempt`` seconds (capped at
    ``cap``, ±``jitter``), at most ``attempts`` times and never after ``deadline`` seconds: the defaults wait
    64–90 s in all before giving up, so an outage of a minute is survived, while an endpoint that accepts
    connections and never answers fails within two minutes (five 20 s read timeouts and the waits between them),
    and so does one that trickles a shard of a few MB (three 35 s object deadlines).
    """

    attempts: int = 13
    base: float = 0.5
    cap: float = 10.0
    jitter: float = 0.25
    deadline: float = 90.0
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    min_bytes_per_second: float = 256 << 10

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy(attempts=...) must be at least 1, got {self.attempts}")
        for name in ("deadline", "connect_timeout", "read_timeout", "min_bytes_per_second"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RetryPolicy({name}=...) must be positive, got {getattr(self, name)}")

    @property
    def settings(self) -> str:
        """The knobs, as a user would change them."""
        return (
            f"RetryPolicy(connect_timeout={self.connect_timeout:g}, read_timeout={self.read_timeout:g}, "
            f"min_bytes_per_second={self.min_bytes_per_second:g}, attempts={self.attempts}, "
            f"deadline={self.deadline:g})"
        )

    def object_timeout(self, size: int) -> float:
        """The total deadline for reading one object (or what is left of it) of ``size`` bytes: the connect and
        read timeouts plus the time at ``min_bytes_per_second`` — 34 s for 1 MB with the defaults."""
        return self.connect_timeout + self.read_timeout + max(0, size) / self.min_bytes_per_second

    def write_timeout(self, size: int) -> float:
        """A bound on one upload of ``size`` bytes, as :meth:`object_timeout` (S3 clients wait for a PUT's "100
        Continue" without a read timeout, so writes get an overall one)."""
        return self.object_timeout(size)

    def delay(self, attempt: int, rng: np.random.Generator) -> float:
        nominal = min(self.cap, self.base * 2**attempt)
        return max(0.0, nominal * (1 + self.jitter * (2 * rng.random() - 1)))

    def call(
        self,
        action: Callable[[], Any],
        *,
        what: str,
        rng: np.random.Generator,
        on_retry: Callable[[BaseException], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        hint: str = "",
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> Any:
        """Run ``action``, retrying failures ``transient`` accepts; raise :class:`ShardReadError` naming ``what`` at
        the end.

        ``hint`` (the endpoint, say) is added to that final message, with the settings that bound the wait.
        """
        started = clock()
        for attempt in range(self.attempts):
            try:
                return action()
            except Exception as error:
                if not transient(error):
                    raise
                pause = self.delay(attempt, rng)
                elapsed = clock() - started
                if attempt == self.attempts - 1 or elapsed + pause > self.deadline:
                    where = f" ({hint})" if hint else ""
                    raise ShardReadError(
                        f"{what}: still failing after {attempt + 1} attempts over {elapsed:.0f}s{where}: "
                        f"{type(error).__name__}: {error}; check the storage endpoint and network, or allow longer "
                        f"waits with {self.settings} (the loader's retry= argument)"
                    ) from error
                if on_retry is not None:
                    on_retry(error)
                sleep(pause)
        raise AssertionError("unreachable")


class ResumableReader:
    """A read-only stream over ``open_at(offset)`` that reopens at the current offset after a transient error.

    ``guard`` (when given) runs each retried read: a location uses it to note that its endpoint answered and to
    explain a final failure in one line.
    """

    def __init__(
        self,
        open_at: Callable[[int], Any],
        *,
        what: str,
        policy: RetryPolicy,
        rng: np.random.Generator,
        on_retry: Callable[[BaseException], None] | None = None,
        hint: str = "",
        transient: Callable[[BaseException], bool] = is_transient,
        guard: Callable[[Callable[[], bytes]], bytes] | None = None,
    ) -> None:
        self._open_at = open_at
        self._transient = transient
        self._guard = guard
        self._what = what
        self._policy = policy
        self._rng = rng
        self._on_retry = on_retry
        self._hint = hint
        self._offset = 0
        self._stream: Any = None

    def _read_once(self, size: int) -> bytes:
        if self._stream is None:
            self._stream = self._open_at(self._offset)
        try:
            return self._stream.read(size)
        except Exception:
            self._close_quietly()
            raise

    def read(self, size: int = -1) -> bytes:
        def retried() -> bytes:
            data: bytes = self._policy.call(
                lambda: self._read_once(size),
                what=self._what,
                rng=self._rng,
                on_retry=self._on_retry,
                hint=self._hint,
                transient=self._transient,
            )
            return data

        data = self._guard(retried) if self._guard is not None else retried()
        self._offset += len(data)
        return data

    def _close_quietly(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # the connection is already broken; the reopen is what matters
                return

    def close(self) -> None:
        self._close_quietly()

    def __enter__(self) -> ResumableReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
