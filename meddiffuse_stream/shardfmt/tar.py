"""Reading shards: a tar reader that groups members into samples, refuses anything unsafe, and always ends.

It reads USTAR, GNU (long names, base-256 sizes) and PAX (path and size records) from any object with ``read(n)``
— a local file, an fsspec stream, a retrying reader, bytes in memory — without seeking, so a shard streams from
object storage without being downloaded first. Every length field is checked before it is used (a PAX record
``0 a=b`` or a negative length cannot make it loop; an oversized extended header cannot make it allocate), each
sample's member count is bounded, and every problem is a :class:`TarProblem` naming the key it belongs to, never
an exception: the caller raises it or counts it.

Positions: every item :func:`iter_samples` yields, except a final fatal problem, is one sample position of the
shard — a good :class:`RawSample`, or a problem standing for the sample it refused. That is how samples are
counted (by the loader's plan, the shard index and the integrity check), so all three always agree.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .compressed import GzipMemberError, GzipStreamError, gunzip_member, tar_stream

__all__ = [
    "MAX_EXTENDED_HEADER_BYTES",
    "MAX_MEMBERS_PER_SAMPLE",
    "MAX_MEMBER_BYTES",
    "RawSample",
    "TarProblem",
    "count_samples",
    "iter_samples",
    "printable_name",
    "split_member_name",
]

MAX_MEMBER_BYTES = 256 << 20
MAX_MEMBERS_PER_SAMPLE = 64  # a real sample has a handful (image, label, json, masks); thousands is an attack
MAX_EXTENDED_HEADER_BYTES = 1 << 20  # PAX records and GNU long names: a name is a few hundred bytes at most
_BLOCK = 512
_ZERO_BLOCK = b"\0" * _BLOCK
_FILE_TYPES = (b"0", b"\0", b"7")


@dataclass
class RawSample:
    """One sample's members, undecoded: ``{"png": b"...", "cls": b"1", ...}``."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    ref: tuple[int, int] | None = None  # (shard, index) once a reader has placed it


@dataclass(frozen=True)
class TarProblem:
    """Something in the shard that is not a usable sample; ``fatal`` means the rest of the shard is lost."""

    reason: str
    key: str | None = None
    fatal: bool = False


class _ArchiveEnd:
    """What the member walk yields at an end-of-archive marker: the sample in progress is whole."""


_ARCHIVE_END = _ArchiveEnd()


class _Corrupt(ValueError):
    """A header field that cannot be trusted: the rest of the shard cannot be located."""


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/key.roi.png`` → (``dir/key``, ``roi.png``): the key ends at the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, dot, suffix = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), suffix if dot else ""


def _number(field_bytes: bytes, what: str) -> int:
    """A numeric header field: octal digits (NUL/space padded) or GNU base-256; never negative."""
    if field_bytes and field_bytes[0] & 0x80:
        if field_bytes[0] != 0x80:  # 0xff starts a negative base-256 number
            raise _Corrupt(f"negative or malformed base-256 {what}")
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.translate(None, b"01234567"):  # int(..., 8) would take "+7", "-7", "0o7" and "1_0"
        raise _Corrupt(f"{what} field is not octal")  # its bytes are not shown: they may be any file's content
    return int(text, 8)


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """``"%d %s=%s\\n"`` records, each length checked: it counts its own digits and must advance and fit."""
    records: dict[bytes, bytes] = {}
    position = 0
    while position < len(data):
        if data[position] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", position, position + 21)
        digits = data[position:space] if space > position else b""
        if not digits or not digits.isdigit() or not digits.isascii():
            raise _Corrupt(f"PAX record at {position} has no length")
        length = int(digits)
        end = position + length
        if length < len(digits) + 4 or end > len(data) or data[end - 1 : end] != b"\n":
            raise _Corrupt(f"PAX record at {position} has a length ({length}) that does not fit it")
        name, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not name:
            raise _Corrupt(f"PAX record at {position} is not NAME=VALUE")
        records[name] = value
        position = end
    return records


class _Blocks:
    """Reads the stream in 1 MiB pieces and serves headers and members from memory: one storage call per MiB,
    not two per member. ``skip`` seeks where the stream can (counting a local shard reads only its headers)."""

    def __init__(self, stream: BinaryIO, piece: int = 1 << 20, seek: bool = False) -> None:
        self._stream = stream
        self._piece = piece
        self._buffer = b""
        self._position = 0
        self._seek = seek
        self._end: int | None = None

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
        buffered = len(self._buffer) - self._position
        if self._seek and size > buffered:
            try:
                target = self._stream.tell() + size - buffered
                if self._end is None:
                    self._end = self._stream.seek(0, 2)
                if target > self._end:
                    return False
                self._stream.seek(target)
            except (OSError, OverflowError, ValueError):
                return False
            self._buffer, self._position = b"", 0
            return True
        while size > 0:  # in pieces: a huge member must not be held in memory to be passed over
            piece = len(self.read_exact(min(size, self._piece)))
            if piece == 0:
                return False
            size -= piece
        return True


def _members(
    raw_stream: BinaryIO, max_member_bytes: int, with_data: bool = True
) -> Iterator[tuple[str, bytes, int] | TarProblem | _ArchiveEnd]:
    """Every member of the (possibly gzip-compressed) tar, or the fatal problem that ends it."""
    try:
        yield from _tar_members(tar_stream(raw_stream), max_member_bytes, with_data)
    except GzipStreamError as error:
        yield TarProblem(f"{error}: the rest of the shard cannot be read", fatal=True)


def _tar_members(
    raw_stream: BinaryIO, max_member_bytes: int, with_data: bool = True
) -> Iterator[tuple[str, bytes, int] | TarProblem | _ArchiveEnd]:
    """A zero block marks an archive's end, but the stream is read on: all zeros to its end is the end (tar pads
    archives with them); a header after them is a second archive (``cat a.tar b.tar``), read like the first;
    anything else is a fatal problem named here. Never a silent stop with samples left unread."""
    seekable = not with_data and _seekable(raw_stream)
    stream = _Blocks(raw_stream, piece=_BLOCK * 8 if seekable else 1 << 20, seek=seekable)
    long_name: str | None = None
    pax: dict[bytes, bytes] = {}
    offset = 0
    ended = False  # an end-of-archive marker was seen: what follows is padding or a second archive
    while True:
        header = stream.read_exact(_BLOCK)
        if header == _ZERO_BLOCK:
            if not ended:
                yield _ARCHIVE_END  # the sample in progress is whole, whatever follows
            ended = True
            offset += _BLOCK
            continue
        if ended and not header.strip(b"\0"):
            return  # the stream's end (zero padding cut short of a block counts as padding)
        if len(header) < _BLOCK:
            where = "without an end-of-archive marker" if not header else "inside a header"
            yield TarProblem(f"truncated tar: the stream ends at byte {offset} {where}", fatal=True)
            return
        try:
            checksum = sum(header[:148]) + 8 * 32 + sum(header[156:])
            if _number(header[148:156], "checksum") != checksum:
                raise _Corrupt("checksum mismatch")
            size = _number(header[124:136], "size")
            kind = header[156:157]
            if kind in (b"L", b"K", b"x", b"g") and size > MAX_EXTENDED_HEADER_BYTES:
                raise _Corrupt(f"extended header of {size} bytes (the limit is {MAX_EXTENDED_HEADER_BYTES})")
        except _Corrupt as error:
            yield TarProblem(f"corrupt tar header at byte {offset} ({error})", fatal=True)
            return
        if kind not in (b"L", b"K", b"x", b"g") and b"size" in pax:  # a PAX size overrides the header's
            size = int(pax[b"size"])
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        offset += _BLOCK + padded
        raw_name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
            raw_name = header[345:500].split(b"\0", 1)[0] + b"/" + raw_name
        if kind in (b"L", b"K", b"x", b"g"):
            data = stream.read_exact(padded)
            if len(data) < padded:
                yield TarProblem("truncated tar: extended header cut short", fatal=True)
                return
            try:
                if kind == b"L":
                    long_name = data[:size].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif kind == b"x":
                    pax = _pax_records(data[:size])
                    if b"size" in pax and not (pax[b"size"].isdigit() and pax[b"size"].isascii()):
                        raise _Corrupt("PAX size record is not a number")
                    if b"path" in pax:
                        long_name = pax[b"path"].decode("utf-8", "surrogateescape")
            except _Corrupt as error:
                yield TarProblem(f"corrupt PAX header at byte {offset - _BLOCK - padded} ({error})", fatal=True)
                return
            continue  # K (a long link target) and g (global records) carry nothing a sample needs
        name = long_name if long_name is not None else raw_name.decode("utf-8", "surrogateescape")
        long_name, pax = None, {}
        if kind not in _FILE_TYPES:
            if not stream.skip(padded):
                yield TarProblem("truncated tar inside a non-file member", fatal=True)
                return
            if kind != b"5":  # directories are harmless; links and devices are refused
                what = {b"1": "hard link", b"2": "symbolic link"}.get(kind, f"type {kind!r}")
                yield TarProblem(f"{what} member {name!r} refused", printable_name(split_member_name(name)[0]))
            continue
        problem = _unsafe_name(name) or (
            f"member {name!r} of {size} bytes is over the {max_member_bytes}-byte limit"
            if size > max_member_bytes
            else None
        )
        if problem is not None or not with_data:
            if not stream.skip(padded):
                yield TarProblem(
                    f"truncated tar inside member {name!r}", printable_name(split_member_name(name)[0]), fatal=True
                )
                return
            key = split_member_name(name)[0]
            yield TarProblem(problem, printable_name(key)) if problem is not None else (name, b"", size)
            continue
        data = stream.read_exact(padded)
        if len(data) < padded:
            yield TarProblem(
                f"truncated tar inside member {name!r}", printable_name(split_member_name(name)[0]), fatal=True
            )
            return
        yield name, data[:size], size


def printable_name(name: str) -> str:
    """A member name as messages show it: control characters (newlines, terminal escapes) as ``\\xNN``."""
    if not any(_is_control(c) for c in name):
        return name
    return "".join(ascii(c)[1:-1] if _is_control(c) else c for c in name)


def _is_control(character: str) -> bool:
    return ord(character) < 32 or 127 <= ord(character) < 160


def _unsafe_name(name: str) -> str | None:
    if not name.isascii():  # rare: only then can the raw bytes have been other than UTF-8 (kept as surrogates)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return f"member name is not UTF-8: {name.encode('utf-8', 'surrogateescape')!r}"
    if any(_is_control(c) for c in name):
        return (
            f"member name '{printable_name(name)}' holds control characters (they could rewrite a terminal or a "
            "log): refused"
        )
    if name[:1] == "/" or (".." in name and ".." in name.split("/")):
        return f"unsafe member path {name!r} refused"
    return None


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable()) and stream.tell() >= 0
    except (AttributeError, OSError, ValueError):
        return False


def iter_samples(
    stream: BinaryIO, max_member_bytes: int = MAX_MEMBER_BYTES, *, with_data: bool = True
) -> Iterator[RawSample | TarProblem]:
    """Samples in shard order, one item per sample position, then at most one fatal problem.

    Members of one sample must be adjacent, as WebDataset writes them. A sample with a refused member is one
    :class:`TarProblem` (its other members, before or after, are passed over); ``with_data=False`` reads only the
    headers, seeking past the data where the stream can (members then hold ``b""``).
    """
    current: RawSample | None = None
    closed: RawSample | None = None  # the sample an end-of-archive block closed: whole, unless its key goes on
    refused: str | None = None  # the key of the sample a problem stood for: its other members are passed over
    seen: set[str] = set()
    sample_bytes = 0
    for item in _members(stream, max_member_bytes, with_data):
        if isinstance(item, _ArchiveEnd):
            if current is not None:
                closed = current
            current = None
            continue
        if closed is not None:
            if not isinstance(item, TarProblem) and split_member_name(item[0])[0] == closed.key:
                key = closed.key  # its members on both sides of a zero block: a damaged shard, not two samples
                closed, refused = None, key
                yield TarProblem(
                    f"tar fault: a zero (end-of-archive) block splits sample '{printable_name(key)}', with members "
                    "on both sides of it; the sample is refused: rewrite the shard as one archive",
                    printable_name(key),
                )
                continue
            yield closed
            closed = None
        if isinstance(item, TarProblem):
            if current is not None:
                if item.key != current.key and (item.key is not None or not item.fatal):
                    yield current  # the problem is in a later sample: this one is whole
                current = None  # else it is this sample's: refused, or cut short with the rest of the shard
            if item.fatal:
                yield item
                return
            if item.key is None or item.key != refused:
                refused = item.key
                if item.key is not None:
                    seen.add(item.key)
                yield item
            continue
        name, data, size = item
        key, suffix = split_member_name(name)
        suffix = suffix.lower()  # ".JPEG", ".CLS": matched as WebDataset matches them
        if key == refused:
            continue  # the rest of a refused sample
        gzipped = suffix.endswith(".gz") and len(suffix) > 3
        if gzipped:  # "x.cls.gz" is the member "cls", decompressed within the member limit (as WebDataset does)
            suffix = suffix[:-3]
            if with_data:
                try:
                    data = gunzip_member(data, max_member_bytes)
                except GzipMemberError as error:
                    if current is not None and key == current.key:
                        current = None
                    elif current is not None:
                        yield current
                        current = None
                    refused = key
                    seen.add(key)
                    yield TarProblem(f"member {name!r} {error}", key)
                    continue
                size = len(data)
        if current is not None and key != current.key:
            yield current
            current = None
        if current is None:
            refused = None
            if key in seen:
                refused = key
                yield TarProblem(f"duplicate sample key {key!r} (its members are not adjacent)", key)
                continue
            seen.add(key)
            current, sample_bytes = RawSample(key), 0
        problem = None
        if suffix in current.members:
            problem = f"member {name!r} appears twice"
        elif len(current.members) >= MAX_MEMBERS_PER_SAMPLE:
            problem = f"sample {key!r} has more than {MAX_MEMBERS_PER_SAMPLE} members"
        elif sample_bytes + size > 2 * max_member_bytes:
            problem = f"sample {key!r} holds more than {2 * max_member_bytes} bytes"
        if problem is not None:
            current, refused = None, key
            yield TarProblem(problem, key)
            continue
        current.members[suffix] = data
        sample_bytes += size
    if closed is not None:
        yield closed
    if current is not None:
        yield current


def count_samples(stream: BinaryIO, max_member_bytes: int = MAX_MEMBER_BYTES) -> tuple[int, TarProblem | None]:
    """Sample positions in a shard and the fatal problem that ended it early (``None`` if it is whole).

    Reads only the headers of a seekable stream (a local file): a shard is counted without reading its data.
    """
    count = 0
    for item in iter_samples(stream, max_member_bytes, with_data=False):
        if isinstance(item, TarProblem) and item.fatal:
            return count, item
        count += 1
    return count, None
