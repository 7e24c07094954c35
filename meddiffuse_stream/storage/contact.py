"""Which storage endpoints have answered in this process, and the retry rule that follows from it.

A connection refused, a host name that does not resolve, or a TLS handshake that fails — at an endpoint that has
never answered in this process — is a wrong setting (a port, a host, ``http`` for ``https``, a certificate), not a
passing fault: it fails at once, so a typo costs a second instead of the retry policy's 90 s. The same failure at
an endpoint that *has* answered is a server restarting (SeaweedFS refuses for 20–60 s after a crash, a Kubernetes
Service while its pod moves): transient, and retried as before.

"Answered" means any reply at all — data, a 403, a 404. Worker processes know what their parent knew: a forked one
inherits this registry, a spawned one is told when it unpickles a :class:`~.location.Location`. A temporary DNS
failure (``EAI_AGAIN``: no name server reachable) is not "does not resolve" and stays transient.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Iterator

__all__ = ["has_answered", "mark_answered", "unreachable_kind", "wrapped_errors"]

_answered: set[str] = set()
_lock = threading.Lock()

_REFUSED = re.compile(r"connection refused", re.IGNORECASE)
_UNRESOLVED = re.compile(
    r"name or service not known|nodename nor servname|no address associated|failed to lookup address|dns error",
    re.IGNORECASE,
)
_TLS = re.compile(
    r"certificate verify failed|wrong version number|invalid ?(peer ?)?certificate|unknown ?issuer|tls handshake|"
    r"ssl validation failed|record layer failure|invalidcontenttype",
    re.IGNORECASE,
)


def mark_answered(endpoint: str) -> None:
    """``endpoint`` (a :attr:`Location.contact_key <.location.Location.contact_key>`) replied at least once."""
    with _lock:
        _answered.add(endpoint)


def has_answered(endpoint: str) -> bool:
    with _lock:
        return endpoint in _answered


def wrapped_errors(error: BaseException, limit: int = 12) -> Iterator[BaseException]:
    """``error`` and what it wraps: causes, contexts, aiohttp's ``os_error`` and botocore's ``kwargs['error']``."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending and len(seen) < limit:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = getattr(current, "kwargs", None)
        pending += [
            current.__cause__,
            current.__context__,
            getattr(current, "os_error", None),
            inner.get("error") if isinstance(inner, dict) else None,
        ]


def unreachable_kind(error: BaseException) -> str | None:
    """``"tls"``, ``"unresolved"`` or ``"refused"`` when ``error`` says no HTTP exchange could take place with the
    endpoint for that reason; ``None`` for anything else (timeouts, resets, HTTP errors)."""
    chain = list(wrapped_errors(error))
    for item in chain:
        if isinstance(item, ssl.SSLError | ssl.CertificateError) or type(item).__name__ == "SSLError":
            return "tls"
    for item in chain:
        if isinstance(item, socket.gaierror) and item.errno != socket.EAI_AGAIN:
            return "unresolved"
        if type(item).__name__ == "ClientConnectorDNSError" and not _temporary_dns(item):
            return "unresolved"
    for item in chain:
        if isinstance(item, ConnectionRefusedError):
            return "refused"
    text = " ".join(str(item) for item in chain)
    if _TLS.search(text):
        return "tls"
    if _UNRESOLVED.search(text):
        return "unresolved"
    if _REFUSED.search(text):
        return "refused"
    return None


def _temporary_dns(error: BaseException) -> bool:
    inner = getattr(error, "os_error", None)
    return isinstance(inner, socket.gaierror) and inner.errno == socket.EAI_AGAIN
