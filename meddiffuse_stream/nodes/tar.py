"""A streaming tar reader that groups members into samples, tolerates nothing unsafe, and never unpickles.

It reads USTAR, GNU long names and PAX path records from any object with ``read(n)`` — a local file, an fsspec
stream, a retrying reader — without seeking, so a shard streams from object storage without being downloaded
first. Unsafe or malformed members become :class:`TarProblem` entries for the caller to raise or count.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = ["MAX_MEMBER_BYTES", "RawSample", "TarProblem", "iter_samples", "split_member_name"]

MAX_MEMBER_BYTES = 256 << 20
_BLOCK = 512


@dataclass
class RawSample:
    """One sample's members, undecoded: ``{"png": b"...", "cls": b"1", ...}``."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    ref: tuple[int, int] | None = None  # (shard, index) once a reader has placed it


@dataclass(frozen=True)
class TarProblem:
    """Something in the shard that is not a usable member; ``fatal`` means the rest of the shard is lost."""

    reason: str
    key: str | None = None
    fatal: bool = False


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/key.roi.png`` → (``dir/key``, ``roi.png``): the key ends at the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, dot, suffix = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), suffix if dot else ""


def _octal(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256 for large sizes
        value = int.from_bytes(field_bytes[1:], "big")
        return value
    text = field_bytes.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


class _Blocks:
    """Reads the stream in 1 MiB pieces and serves headers and members from memory: one storage call per MiB,
    not two per member."""

    def __init__(self, stream: BinaryIO, piece: int = 1 << 20) -> None:
        self._stream = stream
        self._piece = piece
        self._buffer = b""
        self._position = 0

    def read_exact(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the stream."""
        end = self._position + size
        if end > len(self._buffer):
            parts = [self._buffer[self._position :]]
            have = len(parts[0])
            while have < size:
                chunk = self._stream.read(max(self._piece, size - have))
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
            self._buffer, self._position, end = b"".join(parts), 0, size
        data = self._buffer[self._position : end]
        self._position = min(end, len(self._buffer))
        return data

    def skip(self, size: int) -> bool:
        while size > 0:  # in pieces: a huge member must not be held in memory to be passed over
            piece = len(self.read_exact(min(size, self._piece)))
            if piece == 0:
                return False
            size -= piece
        return True


def _pax_path(data: bytes) -> str | None:
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            return None
        length = int(data[position:space])
        record = data[space + 1 : position + length - 1]
        name, _, value = record.partition(b"=")
        if name == b"path":
            return value.decode("utf-8")
        position += length
    return None


def _members(raw_stream: BinaryIO, max_member_bytes: int) -> Iterator[tuple[str, bytes] | TarProblem]:
    stream = _Blocks(raw_stream)
    long_name: str | None = None
    offset = 0
    while True:
        header = stream.read_exact(_BLOCK)
        if header == b"\0" * _BLOCK:
            return  # the end-of-archive marker
        if not header:
            yield TarProblem(
                f"truncated tar: the stream ends at byte {offset} without an end-of-archive marker", fatal=True
            )
            return
        if len(header) < _BLOCK:
            yield TarProblem(f"truncated tar: partial header at byte {offset}", fatal=True)
            return
        stored = header[148:156]
        checksum = sum(header[:148]) + 8 * 32 + sum(header[156:])
        try:
            valid = _octal(stored) == checksum
            size = _octal(header[124:136])
        except ValueError:
            valid = False
        if not valid:
            yield TarProblem(f"corrupt tar header at byte {offset} (checksum mismatch)", fatal=True)
            return
        kind = header[156:157]
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        offset += _BLOCK + padded
        raw_name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
            raw_name = header[345:500].split(b"\0", 1)[0] + b"/" + raw_name
        if kind in (b"L", b"x", b"g"):
            data = stream.read_exact(padded)
            if len(data) < padded:
                yield TarProblem("truncated tar: extended header cut short", fatal=True)
                return
            if kind == b"L":
                long_name = data[:size].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"x":
                long_name = _pax_path(data[:size]) or long_name
            continue
        try:
            name = long_name if long_name is not None else raw_name.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        long_name = None
        if kind not in (b"0", b"\0", b"7"):
            if not stream.skip(padded):
                yield TarProblem("truncated tar inside a non-file member", fatal=True)
                return
            if kind != b"5":  # directories are harmless; links and devices are refused
                what = {b"1": "hard link", b"2": "symbolic link"}.get(kind, f"type {kind!r}")
                yield TarProblem(f"{what} member {name!r} refused", split_member_name(name or "?")[0])
            continue
        if name is None:  # its sample is refused as a whole: the key keeps the raw bytes to group its members
            stream.skip(padded)
            undecodable = raw_name.decode("utf-8", "surrogateescape")
            yield TarProblem(f"member name is not UTF-8: {raw_name!r}", split_member_name(undecodable)[0])
            continue
        if name.startswith("/") or ".." in name.split("/"):
            stream.skip(padded)
            yield TarProblem(f"unsafe member path {name!r} refused", split_member_name(name)[0])
            continue
        if size > max_member_bytes:
            if not stream.skip(padded):
                yield TarProblem(f"truncated tar inside member {name!r}", split_member_name(name)[0], fatal=True)
                return
            yield TarProblem(f"member {name!r} of {size} bytes is over the {max_member_bytes}-byte limit",
                             split_member_name(name)[0])  # fmt: skip
            continue
        data = stream.read_exact(padded)
        if len(data) < padded:
            yield TarProblem(f"truncated tar inside member {name!r}", split_member_name(name)[0], fatal=True)
            return
        yield name, data[:size]


def iter_samples(stream: BinaryIO, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[RawSample | TarProblem]:
    """Samples in shard order; members of one sample must be adjacent, as the shard format writes them."""
    current: RawSample | None = None
    seen: set[str] = set()
    for item in _members(stream, max_member_bytes):
        if isinstance(item, TarProblem):
            if current is not None and item.key != current.key:
                if item.key is not None or not item.fatal:
                    yield current  # the problem is in a later sample: this one is whole
                current = None
            elif item.fatal:
                current = None  # cut short inside this sample: lost with the rest of the shard
            yield item  # a refused member of ``current`` comes first: the reader then passes over its other members
            continue
        name, data = item
        key, suffix = split_member_name(name)
        if current is not None and key != current.key:
            yield current
            current = None
        if current is None:
            if key in seen:
                yield TarProblem(f"duplicate sample key {key!r} (its members are not adjacent)", key)
                continue
            seen.add(key)
            current = RawSample(key)
        if suffix in current.members:
            yield TarProblem(f"member {name!r} appears twice", key)
            continue
        current.members[suffix] = data
    if current is not None:
        yield current
