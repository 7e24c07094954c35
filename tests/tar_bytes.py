"""Raw tar bytes for tests: headers of any type with any field, PAX records and GNU long names, built by hand so
the tests can write what no well-behaved tar writer would."""

from __future__ import annotations

from meddiffuse_stream.shardfmt.writer import ustar_header

BLOCK = 512
END = b"\0" * 1024


def header(name: str, size: int, kind: bytes = b"0", size_field: bytes | None = None) -> bytes:
    """A header for ``name`` of type ``kind``; ``size_field`` (12 bytes) replaces the octal size as written."""
    block = bytearray(ustar_header(name if len(name.encode()) <= 100 else "x", min(size, 8**11 - 1)))
    block[156:157] = kind
    if size_field is not None:
        block[124:136] = size_field.ljust(12, b"\0")[:12]
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def member(name: str, data: bytes, kind: bytes = b"0") -> bytes:
    return header(name, len(data), kind) + padded(data)


def pax(records: bytes) -> bytes:
    """A PAX extended header (type ``x``) holding ``records`` exactly as given."""
    return header("././@PaxHeader", len(records), b"x") + padded(records)


def pax_record(name: str, value: str) -> bytes:
    body = f" {name}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def gnu_long_name(name: str, size: int | None = None) -> bytes:
    """A GNU long-name header (type ``L``); ``size`` may claim another length than the name has."""
    data = name.encode() + b"\0"
    return header("././@LongLink", len(data) if size is None else size, b"L") + padded(data)


def sample(key: str, png: bytes = b"png-bytes", cls: bytes = b"1") -> bytes:
    return member(f"{key}.png", png) + member(f"{key}.cls", cls)
