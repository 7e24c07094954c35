"""Storage failures a user can act on: one line naming the URL, the endpoint and the setting to check.

Each subclasses the builtin a caller already catches (``PermissionError``, ``FileNotFoundError``,
``ConnectionError``), so code written against those keeps working; the client library's own exception is chained
(``raise ... from error``) for debugging and is never retried: these are decisions, not transient faults.
"""

from __future__ import annotations

__all__ = ["StorageAccessError", "StorageError", "StorageNotFoundError", "StorageUnreachableError"]


class StorageError(OSError):
    """A storage failure explained in one line (see :func:`~meddiffuse_stream.storage.explain.explain_failure`)."""


class StorageAccessError(StorageError, PermissionError):
    """No credentials, wrong credentials, or an identity the bucket refuses."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The bucket does not exist at the endpoint asked."""


class StorageUnreachableError(StorageError, ConnectionError):
    """The endpoint never answered: connection refused, a host name that does not resolve, or a TLS failure."""
