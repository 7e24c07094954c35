"""Gzip as WebDataset meets it: whole shards (``.tar.gz``, ``.tgz``) and single members (``x.cls.gz``).

Stock WebDataset opens shards with ``tarfile`` in ``r|*`` mode, which streams gzip-compressed ones, and decodes a
member whose name ends in ``.gz`` as the member without it. Both are read here the same way, with the limits the
tar reader keeps: a shard is decompressed as a stream (never whole in memory; the tar reader bounds each member),
a member to at most the member size limit (a small member that would inflate past it is refused, not
allocated). Compressed shards are recognised by their bytes (the gzip magic), so a name is never trusted.
"""

from __future__ import annotations

import gzip
import io
import zlib
from typing import Any, BinaryIO

__all__ = [
    "GZIP_MAGIC",
    "SHARD_SUFFIXES",
    "GzipMemberError",
    "GzipStreamError",
    "gunzip_member",
    "is_gzip",
    "shard_name",
    "tar_stream",
]

GZIP_MAGIC = b"\x1f\x8b"
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # what a listing reads as shards (what stock WebDataset reads)
_PIECE = 1 << 20


class GzipMemberError(ValueError):
    """A ``.gz`` member that cannot be used: not gzip, cut short, or larger than the limit once decompressed."""


class GzipStreamError(ValueError):
    """A compressed shard whose gzip stream is corrupt or cut short: the rest of the shard cannot be read."""


def shard_name(path: str) -> bool:
    """Whether ``path`` names a shard by its suffix (case as written: ``X.TAR`` is not WebDataset's)."""
    return path.endswith(SHARD_SUFFIXES)


def is_gzip(head: bytes) -> bool:
    return head[:2] == GZIP_MAGIC


def gunzip_member(data: bytes, limit: int) -> bytes:
    """The decompressed bytes of a ``.gz`` member (all its gzip streams), at most ``limit`` of them."""
    out = bytearray()
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise GzipMemberError(f"decompresses to more than the {limit}-byte member limit")
            if not inflater.eof:
                if inflater.unconsumed_tail:
                    raise GzipMemberError(f"decompresses to more than the {limit}-byte member limit")
                raise GzipMemberError("is cut short (an incomplete gzip stream)")
            rest = inflater.unused_data.lstrip(b"\0")  # concatenated gzip members, as gzip itself reads them
    except zlib.error as error:
        raise GzipMemberError(f"is not valid gzip ({error})") from None
    return bytes(out)


class _Stream(io.RawIOBase):
    """A decompressing stream that only reads forward (so the tar reader never seeks inside gzip, which would
    decompress from the start again for every seek)."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._inner = gzip.GzipFile(fileobj=raw, mode="rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        try:
            return self._inner.read(size)
        except (OSError, EOFError, zlib.error) as error:  # the tar reader ends the shard with a fatal problem
            raise GzipStreamError(f"corrupt or cut-short gzip stream ({error})") from None

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def tar_stream(stream: BinaryIO) -> BinaryIO:
    """``stream`` itself for a plain tar; for a gzip-compressed one, a forward-only stream of the tar inside.

    A seekable stream is looked at and rewound; any other is wrapped so the bytes looked at are read again.
    """
    seekable = _seekable(stream)
    start = stream.tell() if seekable else 0
    head = stream.read(2)
    if seekable:
        stream.seek(start)
        raw: Any = stream
    else:
        raw = _Prefixed(head, stream)
    if not is_gzip(head):
        return raw
    return _Stream(raw)  # type: ignore[return-value]


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``stream``: a peek undone on a stream that cannot seek."""

    def __init__(self, head: bytes, stream: Any) -> None:
        super().__init__()
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._stream.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            if len(data) < size:
                data += self._stream.read(size - len(data))
            return data
        return self._stream.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _seekable(stream: Any) -> bool:
    try:
        return bool(stream.seekable()) and stream.tell() >= 0
    except (AttributeError, OSError, ValueError):
        return False
