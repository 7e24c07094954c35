"""Where datasets live: any fsspec URL (local path, ``file://``, ``s3://``, ``gs://``, ``memory://``).

Credentials come from ``storage_options`` or the usual environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``) and are never logged or written into a dataset.

Every request to object storage is bounded: S3 clients get the connect and read timeouts of the location's
:class:`~meddiffuse_stream.storage.retry.RetryPolicy` and no retries of their own (botocore's and s3fs's retry loops
would otherwise multiply into minutes of silence), and every operation here is retried by that policy instead,
each retry reported to ``on_retry`` so it can be counted. An endpoint that has never answered in this process is
not retried when it refuses, does not resolve or fails TLS (:mod:`.contact`), and failures of the user's settings
— credentials, bucket, endpoint — are raised as one-line :class:`~.errors.StorageError` (:mod:`.explain`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO, TypeVar

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from .contact import has_answered, mark_answered, unreachable_kind
from .explain import EndpointSettings, explain_failure
from .local_files import check_inside, check_regular, open_regular
from .ranged_file import open_ranged
from .retry import RetryPolicy, is_transient

__all__ = [
    "Location",
    "atomic_write",
    "bounded_options",
    "parse_storage_options",
    "sha256_of",
]

_HASH_CHUNK = 1 << 20
_S3 = {"s3", "s3a"}
_T = TypeVar("_T")


def bounded_options(url: str, storage_options: Mapping[str, Any], policy: RetryPolicy) -> dict[str, Any]:
    """``storage_options`` with the policy's timeouts and the client's own retries off (S3), the user's wins."""
    options = dict(storage_options)
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in _S3:
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", policy.connect_timeout)
        config.setdefault("read_timeout", policy.read_timeout)
        config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})  # the first try only
        options["config_kwargs"] = config
    return options


def parse_storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["endpoint_url=http://127.0.0.1:8333", "anon=false"]`` → a dict with booleans and numbers parsed."""
    options: dict[str, Any] = {}
    for position, pair in enumerate(pairs or [], start=1):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(
                f"--storage-option number {position} is not NAME=VALUE (e.g. "
                "endpoint_url=http://host:8333); its text is not shown, it may be a secret"
            )
        lowered = value.lower()
        if lowered in ("true", "false"):
            options[name] = lowered == "true"
        else:
            try:
                options[name] = int(value)
            except ValueError:
                options[name] = value
    return options


class Location:
    """A directory on some filesystem, with the few operations the project needs, picklable for workers.

    ``retry`` bounds every request (timeouts) and retries transient failures; ``on_retry`` hears of each retry
    (a loader counts them). It is not pickled: a worker process counts its own.
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.fs, root = fsspec.core.url_to_fs(self.url, **bounded_options(self.url, self.storage_options, self.retry))
        self.root = root.rstrip("/") or root
        if self.protocols & _S3 and "retries" not in (self.storage_options.get("config_kwargs") or {}):
            self.fs.retries = 1  # s3fs's own retry loop (5 tries) off: RetryPolicy retries, and counts
        self.settings = EndpointSettings.of(sorted(self.protocols)[0], self.storage_options)

    def __getstate__(self) -> dict[str, Any]:
        answered = not self.is_local and has_answered(self.contact_key)  # a spawned worker knows what we knew
        return {"url": self.url, "storage_options": self.storage_options, "retry": self.retry, "answered": answered}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], retry=state.get("retry"))  # type: ignore[misc]
        if state.get("answered"):
            mark_answered(self.contact_key)

    def __repr__(self) -> str:  # storage options may hold secrets: never shown
        return f"Location({self.url!r})"

    @property
    def protocols(self) -> set[str]:
        protocol = self.fs.protocol
        return {protocol} if isinstance(protocol, str) else set(protocol)

    @property
    def endpoint(self) -> str:
        """Which server requests go to, for messages: the S3 endpoint URL, or the filesystem's default."""
        return "local disk" if self.is_local else self.settings.shown

    @property
    def contact_key(self) -> str:
        """This location's endpoint as :mod:`.contact` remembers it (one per protocol and endpoint URL)."""
        return f"{self.settings.protocol}|{self.settings.endpoint or 'default'}"

    def transient(self, error: BaseException) -> bool:
        """Whether the retry policy may try again: :func:`~.retry.is_transient`, except that an endpoint which never
        answered in this process and now refuses, does not resolve or fails TLS is a setting to fix, not a fault."""
        if not is_transient(error):
            return False
        return unreachable_kind(error) is None or has_answered(self.contact_key)

    def guarded(self, action: Callable[[], _T], relative: str) -> _T:
        """Run ``action`` (one or more requests to this location's endpoint): an answer marks the endpoint as
        reached (:mod:`.contact`); a failure of the user's settings becomes a one-line
        :class:`~.errors.StorageError` naming ``relative``'s URL, with the client's exception chained."""
        try:
            result = action()
        except Exception as error:
            if not is_transient(error) and unreachable_kind(error) is None:
                mark_answered(self.contact_key)  # a final HTTP error (403, 404) is an answer too
            failure = explain_failure(error, self.display(relative), self.settings)
            if failure is None:
                raise
            raise failure from error
        mark_answered(self.contact_key)
        return result

    def retrying(self, action: Callable[[], Any], relative: str) -> Any:
        """Run a storage call under the retry policy (remote only: local disk has no transient failures)."""
        if self.is_local:
            return action()
        what = self.display(relative)
        return self.guarded(
            lambda: self.retry.call(
                action,
                what=what,
                rng=np.random.default_rng(zlib.crc32(what.encode())),
                on_retry=self.on_retry,
                hint=self.endpoint,
                transient=self.transient,
            ),
            relative,
        )

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str = "") -> str:
        """Filesystem path of ``relative`` below the root (``/`` separated on every filesystem).

        ``relative`` must stay below the root: an absolute path or a ``..`` segment (which would reach another
        folder or, on object storage, another bucket) is a ``ValueError``.
        """
        if not relative:
            return self.root
        if relative.startswith("/") or ".." in relative.split("/") or "://" in relative:
            raise ValueError(f"{relative!r} is not a path below {self.url}: absolute paths and '..' are refused")
        return posixpath.join(self.root, relative)

    def display(self, relative: str = "") -> str:
        """A user-facing name for ``relative``: the URL the user gave, joined."""
        return f"{self.url.rstrip('/')}/{relative}" if relative else self.url

    def open(self, relative: str, mode: str = "rb") -> Any:
        """A raw stream (timeouts bound each request; not retried: a stream cannot be replayed)."""
        return self.fs.open(self.path(relative), mode)

    def open_seekable(self, relative: str, size: int | None = None) -> BinaryIO:
        """A seekable binary file for readers that jump around (HDF5): on an object store each read is one ranged
        GET, retried and bounded by its total deadline (:mod:`.ranged_file`); elsewhere the filesystem's own."""
        if getattr(self.fs, "async_impl", False) and not self.is_local:
            return open_ranged(self, relative, size)
        return self.fs.open(self.path(relative), "rb")

    def exists(self, relative: str) -> bool:
        return bool(self.retrying(lambda: self.fs.exists(self.path(relative)), relative))

    def isfile(self, relative: str = "") -> bool:
        return bool(self.retrying(lambda: self.fs.isfile(self.path(relative)), relative))

    def size(self, relative: str) -> int:
        return int(self.retrying(lambda: self.fs.size(self.path(relative)), relative))

    def checked_path(self, relative: str, *, confined: bool = True) -> str:
        """:meth:`path`, checked on local disk before anything opens it: a FIFO, socket or device is a
        :class:`~.local_files.SpecialFileError`, and (``confined``) a symbolic link resolving outside the root an
        :class:`~.local_files.OutsideRootError`. A missing file passes: the read that follows names it."""
        path = self.path(relative)
        if self.is_local:
            shown = self.display(relative)
            if confined:
                check_inside(self.root, path, shown)
            try:
                check_regular(path, shown)
            except FileNotFoundError:
                pass
        return path

    def read_bytes(self, relative: str) -> bytes:
        if self.is_local:  # the variant cache reads many small files: skip fsspec's per-call path handling
            with open_regular(self.path(relative), self.display(relative)) as stream:
                return stream.read()
        return bytes(self.retrying(lambda: self._cat(self.path(relative), relative, None), relative))

    def read_path(self, path: str, size: int | None = None) -> bytes:
        """The bytes of ``path`` as this filesystem names it (a path found by a listing below the root); ``size``
        when the listing gave it (it sets the read's deadline; else it is asked first)."""
        relative = posixpath.relpath(path, self.root) if path.startswith(self.root.rstrip("/") + "/") else path
        return bytes(self.retrying(lambda: self._cat(path, relative, size), relative))

    def read_range(self, relative: str, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of ``relative``: one ranged GET under the retry policy and its total deadline."""
        path = self.path(relative)
        if not getattr(self.fs, "async_impl", False) or self.is_local:
            return bytes(self.retrying(lambda: self.fs.cat_file(path, start=start, end=end), relative))
        return bytes(self.retrying(lambda: self._cat(path, relative, end - start, (start, end)), relative))

    def _cat(self, path: str, relative: str, size: int | None, span: tuple[int, int] | None = None) -> bytes:
        """One whole-object GET; on an async (object-store) filesystem bounded by the object's total deadline
        (:meth:`RetryPolicy.object_timeout`), so a body that trickles is an error the policy retries and counts."""
        if not getattr(self.fs, "async_impl", False) or self.is_local:
            return self.fs.cat_file(path)
        from fsspec.exceptions import FSTimeoutError

        from .retry import ObjectDeadlineError

        asked = size is None
        if size is None:
            size = int(self.fs.size(path))  # one HEAD, which s3fs would send anyway for a whole-object read
        seconds = self.retry.object_timeout(size)
        # a size just asked: a ranged GET (no second HEAD in the client); one from an earlier listing only sets the
        # deadline, the whole object is read (it may have changed since)
        start, end = span if span is not None else (0, size) if asked else (None, None)
        if start is not None and end is not None and end <= start:
            return b""
        try:
            return self.fs.cat_file(path, start=start, end=end, timeout=seconds)
        except FSTimeoutError:
            raise ObjectDeadlineError(self.display(relative), seconds, size, self.retry) from None

    def _bounded(self, size: int) -> dict[str, float]:
        """An overall time limit for one write (async filesystems take it; others have no such hang)."""
        return {"timeout": self.retry.write_timeout(size)} if getattr(self.fs, "async_impl", False) else {}

    def write_bytes(self, relative: str, data: bytes) -> None:
        if self.is_local:
            with atomic_write(self, relative) as stream:
                stream.write(data)
            return
        path = self.path(relative)
        self.retrying(lambda: self.fs.pipe_file(path, data, **self._bounded(len(data))), relative)

    def put_file(self, local_path: str, relative: str) -> None:
        """Upload a local file (streamed, multipart where large) under the retry policy and a time limit."""
        size = os.path.getsize(local_path)
        path = self.path(relative)
        self.retrying(lambda: self.fs.put_file(local_path, path, **self._bounded(size)), relative)

    def makedirs(self, relative: str = "") -> None:
        if self.is_local:
            os.makedirs(self.path(relative), exist_ok=True)
        else:
            with contextlib.suppress(FileExistsError):
                self.retrying(lambda: self.fs.makedirs(self.path(relative), exist_ok=True), relative)

    def remove(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.retrying(lambda: self.fs.rm_file(self.path(relative)), relative)

    def list_files(self, relative: str = "") -> list[str]:
        """Every file below ``relative``, as paths relative to the root, sorted."""
        return sorted(self.file_sizes(relative))

    def file_sizes(self, relative: str = "") -> dict[str, int]:
        """``{relative path: bytes}`` for every file below ``relative`` (one listing, also on object stores)."""
        base = self.path(relative)
        prefix = self.root.rstrip("/") + "/"

        def listing() -> dict[str, Any]:
            if self.is_local and not os.path.exists(base):
                return {}
            return self.fs.find(base, detail=True)  # a missing object-store prefix lists as empty: one request

        found = self.retrying(listing, relative)
        return {
            path[len(prefix) :]: int(info.get("size") or 0)
            for path, info in sorted(found.items())
            if path.startswith(prefix) and info.get("type", "file") == "file"
        }

    def find_sizes(self, path: str) -> dict[str, int]:
        """``{filesystem path: bytes}`` of every file below ``path`` (a filesystem path, e.g. a listed folder)."""
        found = self.retrying(lambda: self.fs.find(path, detail=True), path)
        return {p: int(info.get("size") or 0) for p, info in found.items() if info.get("type", "file") == "file"}

    def glob_sizes(self, pattern: str) -> dict[str, int]:
        """``{filesystem path: bytes}`` of the files matching a glob ``pattern`` (one listing)."""
        found = self.retrying(lambda: self.fs.glob(pattern, detail=True), pattern)
        return {
            path: int(info.get("size") or 0)
            for path, info in sorted(found.items())
            if info.get("type", "file") == "file"
        }


@contextlib.contextmanager
def atomic_write(location: Location, relative: str) -> Iterator[BinaryIO]:
    """Write a file that appears whole or not at all.

    Local files go to a temporary name and are renamed. For object stores the bytes go to a local temporary file
    and are uploaded once the block ends, under the location's retry policy and a time limit: an upload that fails
    halfway is sent again from the start, and nothing is uploaded if the block raises.
    """
    target = location.path(relative)
    if not location.is_local:
        with tempfile.NamedTemporaryFile(prefix=".upload-", suffix=".part") as spool:
            yield spool  # type: ignore[misc]
            spool.flush()
            location.put_file(spool.name, relative)
        return
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def sha256_of(location: Location, relative: str, size: int | None = None) -> str:
    """sha256 of a file, streamed in 1 MiB chunks (remotely through 8 MiB ranged reads, each retried and
    deadlined: :meth:`Location.open_seekable`); ``size`` when the caller knows it saves asking."""
    digest = hashlib.sha256()
    with location.open_seekable(relative, size) as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
