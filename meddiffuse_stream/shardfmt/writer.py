"""Writing shards: sample keys and members, and plain USTAR tars with a fixed mtime and no PAX records.

Such tars are smaller and faster to read than tars carrying per-member timestamps, and byte-identical when rebuilt
from the same input. Shard names are ``{split}/{split}-{index:06d}.tar`` below the dataset root.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from .labels import finding_members
from .members import IMAGE, LABEL, META, ROI, ROIS, member_name
from .png import encode_png

__all__ = [
    "SHARD_MTIME",
    "EncodedSample",
    "ShardWriter",
    "encode_sample",
    "make_key",
    "shard_name",
    "ustar_header",
]

SHARD_MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed so rebuilt shards are byte-identical

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_KEY_LEN = 84  # USTAR names are at most 100 bytes; the longest suffix is ".label_mask.json" (16)
_BLOCK = 512


def shard_name(split: str, index: int) -> str:
    """Relative path of shard ``index`` of ``split``."""
    return f"{split}/{split}-{index:06d}.tar"


def make_key(*parts: str) -> str:
    """A sample key from ``parts``: WebDataset splits a member name at its first dot, so keys have none.

    Characters outside ``[A-Za-z0-9_-]`` become ``_``; overlong keys keep a hash of the full text so they stay
    unique.
    """
    raw = "_".join(p for p in parts if p)
    key = _KEY_UNSAFE.sub("_", raw).strip("_")
    if not key:
        raise ValueError(f"cannot make a sample key from {parts!r}: nothing left after removing unsafe characters")
    if len(key) > _MAX_KEY_LEN:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        key = f"{key[: _MAX_KEY_LEN - 13]}_{digest}"
    return key


@dataclass(frozen=True)
class EncodedSample:
    """One sample's members, ready for a shard: ``{key}.png``, ``.cls`` (multi-label: ``.labels.json`` and maybe
    ``.label_mask.json``), ``.json`` and maybe ``.roi.png``."""

    key: str
    members: tuple[tuple[str, bytes], ...]
    label: int | None
    meta: Mapping[str, Any] = field(default_factory=dict)


def encode_sample(
    key: str,
    image: np.ndarray,
    label: int | None,
    meta: Mapping[str, Any],
    roi: np.ndarray | None = None,
    *,
    findings: Sequence[int] | None = None,
    label_mask: bool = False,
    rois: np.ndarray | None = None,
) -> EncodedSample:
    """Encode one sample; ``meta`` goes into ``{key}.json`` and must be JSON-serialisable. A multi-label sample
    passes ``label=None`` and its ``findings`` (1 / 0 / -1 unknown), with ``label_mask`` in datasets with unknowns,
    and may pass ``rois``: ``(H, W)`` uint8 whose bit k marks finding k's pixels (the ``rois.png`` member)."""
    if findings is not None:
        if label is not None:
            raise ValueError(f"sample {key}: a multi-label sample has findings, not a class label ({label!r})")
        try:
            labels = [(member_name(key, suffix), data) for suffix, data in finding_members(findings, label_mask)]
        except ValueError as error:
            raise ValueError(f"sample {key}: {error}") from None
    elif not isinstance(label, (int, np.integer)) or isinstance(label, bool):
        raise ValueError(f"sample {key}: label must be an integer, got {label!r}")
    else:
        labels = [(member_name(key, LABEL), str(int(label)).encode("ascii"))]
    members = [
        (member_name(key, IMAGE), encode_png(image)),
        *labels,
        (member_name(key, META), json.dumps(dict(meta), sort_keys=True, separators=(",", ":")).encode("utf-8")),
    ]
    if rois is not None and roi is None:
        roi = rois > 0  # roi.png is the union of the findings' ROIs: every reader of one mask keeps working
    if roi is not None:
        if roi.shape[:2] != image.shape[:2]:
            raise ValueError(f"sample {key}: ROI mask {roi.shape} does not match image {image.shape[:2]}")
        members.append((member_name(key, ROI), encode_png((roi > 0).astype(np.uint8) * 255)))
    if rois is not None:
        if findings is None or rois.shape != image.shape[:2] or rois.dtype != np.uint8:
            raise ValueError(
                f"sample {key}: per-finding ROIs are an (H, W) uint8 bit mask of a multi-label sample's image "
                f"{image.shape[:2]}, with their union as its ROI; got {rois.dtype} {rois.shape}"
            )
        if int(rois.max(initial=0)) >> len(findings):
            raise ValueError(f"sample {key}: ROI bits above its {len(findings)} findings are set")
        assert roi is not None  # set from rois above when not given
        if not np.array_equal(rois > 0, roi > 0):
            raise ValueError(f"sample {key}: the ROI must be the union of the per-finding ROIs")
        members.append((member_name(key, ROIS), encode_png(rois)))
    return EncodedSample(key=key, members=tuple(members), label=None if label is None else int(label), meta=meta)


def ustar_header(name: str, size: int) -> bytes:
    """A 512-byte USTAR header for a regular file: mode 0444, uid/gid 0, mtime :data:`SHARD_MTIME`.

    Byte-identical to ``tarfile.TarInfo.tobuf(format=USTAR_FORMAT)`` with those fields, at a tenth of the cost.
    """
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"member name {name!r} is longer than the 100 bytes a USTAR name holds")
    if size >= 8**11:
        raise ValueError(f"member {name!r} of {size} bytes is too large for a USTAR header")
    header = bytearray(
        encoded.ljust(100, b"\0")
        + b"0000444\0"
        + b"0000000\0"
        + b"0000000\0"
        + b"%011o\0" % size
        + b"%011o\0" % SHARD_MTIME
        + b" " * 8
        + b"0"
        + b"\0" * 100
        + b"ustar\x0000"
        + b"\0" * 247
    )
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


class ShardWriter:
    """Writes USTAR members with fixed metadata into ``stream`` and tracks size, sha256 and member offsets."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._sha = hashlib.sha256()
        self._offset = 0
        self._keys: set[str] = set()
        self.count = 0

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._sha.update(data)
        self._offset += len(data)

    def add_member(self, name: str, data: bytes) -> None:
        self._write(ustar_header(name, len(data)))
        self._write(data)
        remainder = len(data) % _BLOCK
        if remainder:
            self._write(b"\0" * (_BLOCK - remainder))

    def add(self, sample: EncodedSample) -> int:
        """Append a sample; returns the byte offset of its first header (for random access)."""
        if sample.key in self._keys:
            raise ValueError(f"duplicate sample key {sample.key!r} in one shard")
        self._keys.add(sample.key)
        offset = self._offset
        for name, data in sample.members:
            self.add_member(name, data)
        self.count += 1
        return offset

    def close(self) -> tuple[int, str]:
        """End the archive (two zero blocks); returns ``(bytes, sha256 hex)``."""
        self._write(b"\0" * (2 * _BLOCK))
        return self._offset, self._sha.hexdigest()
