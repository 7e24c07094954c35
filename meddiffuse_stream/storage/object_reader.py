"""Shard reads from S3 through obstore where it can stand in for s3fs exactly; s3fs everywhere else.

Why: in a decode worker a 5.6 MB shard GET through s3fs costs ~6.7 ms of CPU (aiohttp, botocore) and the first one
in a new process ~120 ms (botocore loads its service models); through obstore (Rust HTTP; the GIL is released while
bytes arrive) ~2.7 ms and ~20 ms. With CPU-bound workers that is 0.82 → 0.90 of local-disk speed (make bench-loader).

Where: only in decode worker *processes* whose parent never imported obstore — its runtime does not survive a fork,
and a child of a process that used it hangs on its first request. Thread workers and ``num_workers=0`` keep s3fs.

When: only if the identity, endpoint and region obstore would use are certainly those s3fs would use: keys
(``storage_options`` or the ``AWS_*`` variables) or anonymous access, and an endpoint or a region. Profiles, config
files, instance roles and other client settings keep s3fs. ``MEDDIFFUSE_S3_READER=fsspec`` turns obstore off.
obstore's own retries are off: the loader's :class:`~meddiffuse_stream.storage.retry.RetryPolicy` retries and counts.
Every GET has the policy's total deadline for the bytes it fetches (obstore's client ``timeout``, one store per
deadline step of 2**(1/4), so a body that trickles is cut off in time and counted as a retry).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from obstore._get import GetOptions  # typing only: obstore is the optional s3 extra

__all__ = [
    "MODE_VARIABLE",
    "ObjectBody",
    "ObstoreReader",
    "allow_in_this_process",
    "reader_for",
    "s3_config",
    "store_settings",
]

MODE_VARIABLE = "MEDDIFFUSE_S3_READER"
_MODES = ("auto", "fsspec")
_CHUNK = 1 << 20

# s3fs options that only steer fsspec's caches and listings, not which request is signed how
_FSSPEC_ONLY = {
    "skip_instance_cache",
    "use_listings_cache",
    "listings_expiry_time",
    "max_paths",
    "default_block_size",
    "default_fill_cache",
    "default_cache_type",
    "cache_regions",
}
_TRANSLATED = {"key", "secret", "token", "anon", "endpoint_url", "client_kwargs"}
_CLIENT_TRANSLATED = {"endpoint_url", "region_name"}

_allowed = False


def allow_in_this_process() -> bool:
    """Called by a decode worker process at start: obstore is safe here unless the parent had imported it."""
    global _allowed
    _allowed = "obstore" not in sys.modules
    return _allowed


def s3_config(storage_options: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any] | None, str]:
    """The obstore ``S3Store`` settings that reach the identity and endpoint s3fs would, or ``(None, why not)``."""
    options = dict(storage_options)
    unknown = sorted(set(options) - _TRANSLATED - _FSSPEC_ONLY)
    if unknown:
        return None, f"storage option(s) {unknown} have no obstore equivalent"
    client = dict(options.get("client_kwargs") or {})
    unknown = sorted(set(client) - _CLIENT_TRANSLATED)
    if unknown:
        return None, f"client_kwargs {unknown} have no obstore equivalent"
    config, why = _credentials(options, environ)
    if config is None:
        return None, why
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    if not endpoint and environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    region = client.get("region_name") or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        config["endpoint"] = str(endpoint)
        config["region"] = region or "us-east-1"  # what botocore signs with for a custom endpoint
    elif region:
        config["region"] = region
    else:
        return None, "no endpoint and no region (s3fs would look the bucket's region up)"
    return config, ""


def _credentials(options: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any] | None, str]:
    """The identity botocore would sign with, where obstore can be given exactly that one."""
    if options.get("anon"):
        return {"skip_signature": True}, ""
    if options.get("key") or options.get("secret"):
        if not (options.get("key") and options.get("secret")):
            return None, "storage_options give only one of key and secret"
        if environ.get("AWS_SESSION_TOKEN") and not options.get("token"):
            return None, "AWS_SESSION_TOKEN is set beside explicit keys"  # obstore would add it; botocore would not
        key, secret, token = options["key"], options["secret"], options.get("token")
    elif environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        if environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE"):
            return None, "a named AWS profile is set (botocore then ignores the key variables)"
        key, secret = environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"]
        token = environ.get("AWS_SESSION_TOKEN")
    else:
        return None, "credentials come from a profile, a config file or an instance role"
    return {"access_key_id": key, "secret_access_key": secret, **({"session_token": token} if token else {})}, ""


def _mode() -> str:
    mode = os.environ.get(MODE_VARIABLE, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{MODE_VARIABLE}={mode!r}: expected one of {_MODES}")
    return mode


_readers: dict[tuple[str, str], ObstoreReader | None] = {}  # one per bucket and settings, in this process


def reader_for(location: Any) -> ObstoreReader | None:
    """The obstore reader for an ``s3://`` location in this process, or None where s3fs must read."""
    protocol = location.fs.protocol
    protocols = {protocol} if isinstance(protocol, str) else set(protocol)
    if not (_allowed and protocols & {"s3", "s3a"} and _mode() == "auto" and importlib.util.find_spec("obstore")):
        return None
    config, _ = s3_config(location.storage_options, os.environ)
    if config is None:
        return None
    bucket = location.root.split("/", 1)[0]
    policy = location.retry
    timeouts = f"{policy.connect_timeout}|{policy.read_timeout}|{policy.min_bytes_per_second}"
    identity = (bucket, f"{sorted(config.items())!r}|{timeouts}")
    if identity not in _readers:
        _readers[identity] = ObstoreReader(
            bucket, config, policy.connect_timeout, policy.read_timeout, policy.min_bytes_per_second
        )
    return _readers[identity]


def store_settings(
    bucket: str,
    config: Mapping[str, Any],
    connect_timeout: float = 10.0,
    read_timeout: float = 20.0,
    total_timeout: float = 3600.0,
) -> dict[str, Any]:
    """``S3Store`` keyword arguments: addressing as botocore's "auto", the loader's timeouts (``total_timeout``
    bounds a whole GET, its body included), retries left to it."""
    config = dict(config)
    endpoint = str(config.get("endpoint", ""))
    if not endpoint and "." not in bucket:  # AWS itself: virtual-hosted; dotted names break its TLS, so path style
        config["virtual_hosted_style_request"] = True
    client = {
        "allow_http": endpoint.startswith("http://"),
        "connect_timeout": f"{connect_timeout:g}s",
        "read_timeout": f"{read_timeout:g}s",  # a stalled body is an error
        "timeout": f"{total_timeout:g}s",  # and so is one that trickles past its deadline
    }
    return {"config": config, "client_options": client, "retry_config": {"max_retries": 0}}


class ObstoreReader:
    """GETs of one bucket's objects; ``open(path, offset)`` gives a stream the loader's retries can reopen."""

    name = "obstore"

    def __init__(
        self,
        bucket: str,
        config: Mapping[str, Any],
        connect_timeout: float = 10.0,
        read_timeout: float = 20.0,
        min_bytes_per_second: float = 256 << 10,
    ) -> None:
        from .retry import RetryPolicy

        self.bucket = bucket
        self._config = dict(config)
        self._policy = RetryPolicy(
            connect_timeout=connect_timeout, read_timeout=read_timeout, min_bytes_per_second=min_bytes_per_second
        )
        self._stores: dict[float, Any] = {}  # one per deadline step: a store's client has one total timeout

    def __repr__(self) -> str:  # the store holds keys: never shown
        return f"ObstoreReader({self.bucket!r})"

    def _store(self, seconds: float) -> Any:
        """The store whose total timeout is ``seconds`` rounded up to a step of 2**(1/4) (at most 19 % longer)."""
        from obstore.store import S3Store

        step = 2 ** (math.ceil(4 * math.log2(max(seconds, 1.0))) / 4)
        if step not in self._stores:
            policy = self._policy
            settings = store_settings(self.bucket, self._config, policy.connect_timeout, policy.read_timeout, step)
            self._stores[step] = S3Store(self.bucket, **settings)
        return self._stores[step]

    def open(self, path: str, offset: int = 0, size: int | None = None) -> ObjectBody:
        """``path`` is ``bucket/key`` as fsspec writes it; ``size`` (when known) spares a request past the end and
        sets the GET's deadline (without it, the object's size is asked first)."""
        import obstore

        key = path.split("/", 1)[1]
        if size is not None and offset >= size:
            return ObjectBody(None, path)
        try:
            if size is None:
                size = int(obstore.head(self._store(self._policy.object_timeout(0)), key)["size"])
            seconds = self._policy.object_timeout(size - offset)
            options: GetOptions = {"range": {"offset": offset}} if offset else {}
            result = obstore.get(self._store(seconds), key, options=options)
        except Exception as error:
            if offset and _status(error) == 416:  # asked to resume at the very end: nothing is left
                return ObjectBody(None, path)
            raise _translate(error, path) from None
        deadline = (time.monotonic() + seconds, seconds, size - offset, self._policy)
        return ObjectBody(result, path, deadline)


class ObjectBody:
    """A read-only stream over one GET's body; errors come as the exceptions the retry policy classifies."""

    def __init__(self, result: Any, path: str, deadline: tuple[float, float, int, Any] | None = None) -> None:
        self._result = result
        self._path = path
        self._deadline = deadline  # (monotonic time, seconds, bytes, policy): when the body must be in
        self._chunks: Iterator[Any] | None = None
        self._buffer = b""
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        if self._result is None:
            return b""
        try:
            if size is None or size < 0:
                if self._chunks is None:
                    data = bytes(self._result.bytes())
                    self._result = None
                    return data
                parts = [self._buffer[self._at :], *(bytes(chunk) for chunk in self._chunks)]
                self._buffer, self._at = b"", 0
                return b"".join(parts)
            if self._chunks is None:
                self._chunks = iter(self._result.stream(min_chunk_size=_CHUNK))
            while len(self._buffer) - self._at < size:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                if self._deadline is not None and time.monotonic() > self._deadline[0]:
                    raise TimeoutError("the object's deadline passed between chunks")
                self._buffer = self._buffer[self._at :] + bytes(chunk)
                self._at = 0
        except Exception as error:
            self._result = None
            if self._deadline is not None and time.monotonic() >= self._deadline[0] - 0.5:
                from .retry import ObjectDeadlineError

                _, seconds, size, policy = self._deadline
                raise ObjectDeadlineError(f"s3://{self._path}", seconds, size, policy) from None
            raise _translate(error, self._path) from None
        data = self._buffer[self._at : self._at + size]
        self._at += len(data)
        return data

    def close(self) -> None:
        self._result, self._chunks, self._buffer = None, None, b""


_STATUS = re.compile(r"status code: (\d{3})")
_DURATION = re.compile(r" in [\d.]+\s?[µmn]?s\b")  # "GET … in 403.357µs": timing noise in a message for users


def _status(error: BaseException) -> int | None:
    found = _STATUS.search(str(error))
    return int(found.group(1)) if found else None


def _translate(error: BaseException, path: str) -> BaseException:
    """obstore's errors as the builtin kinds :func:`~meddiffuse_stream.storage.retry.is_transient` reads."""
    if not isinstance(error, FileNotFoundError) and not type(error).__module__.startswith("obstore"):
        return error  # not a storage error (a bug, an interrupt): never disguised as a retryable one
    text = _DURATION.sub("", str(error).split("Debug source", 1)[0]).strip()
    where = f"s3://{path}"
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"{where}: not found ({text})")
    if type(error).__name__ in ("PermissionDeniedError", "UnauthenticatedError"):
        return PermissionError(f"{where}: access denied, check the keys and the bucket policy ({text})")
    status = _status(error)
    if status is not None and 300 <= status < 400:  # s3fs follows a bucket's region; obstore reports it
        return OSError(
            f"{where}: HTTP {status}, the bucket answers from another region: set client_kwargs={{'region_name': ...}} "
            f"or AWS_REGION to the bucket's region, or {MODE_VARIABLE}=fsspec ({text})"
        )
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return OSError(f"{where}: HTTP {status} ({text})")
    return ConnectionError(f"{where}: {text}")  # 5xx, SlowDown, refused, reset, a body cut short: worth a retry
