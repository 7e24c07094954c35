"""A plain shard's samples as columns, so the fused batch stage decodes them without a sample object each.

At 64 px decoding a PNG costs ~40 µs; everything the worker did around it per sample — a ``RawSample`` and its
member dict built from the layout, the planned-sample tuple, the header checks and label parse of the fast path —
cost ~7 µs more, a seventh of the worker. For a shard whose samples all have the same members, a ``.png`` and a
``.cls`` among them (what the converter writes), all of that is known from the layout and the bytes at once: where
each PNG sits, whether its header is a plain 8-bit grey or RGB one and how many pixels it has, and the integer
its ``.cls`` holds. :func:`png_columns` computes that once per layout (it is kept with the layout across epochs,
valid for equal bytes); :class:`PlainRows` serves the shard as the sequence of ``RawSample`` every reader expects,
and as rows (:data:`Row`) to :class:`~meddiffuse_stream.nodes.decode_batch.DecodeBatch`, which builds a
``RawSample`` only for a sample it hands to the full decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from ...shardfmt.members import IMAGE, LABEL
from ...shardfmt.tar import RawSample
from ...shardfmt.tar_fast import PlainLayout

__all__ = ["PlainRows", "PngColumns", "Row", "build_row", "png_columns"]

_SIGNATURE = np.frombuffer(b"\x89PNG\r\n\x1a\n", np.uint8)
_HEAD = np.arange(29)  # the signature and the IHDR chunk up to the interlace byte
_BIG_ENDIAN = 256 ** np.arange(3, -1, -1, dtype=np.int64)


@dataclass(frozen=True)
class PngColumns:
    """Per sample of a layout: the ``.png`` member's bounds, its pixel count where it is a plain 8-bit grey or RGB,
    non-interlaced PNG (0 otherwise), and its ``.cls`` as a non-negative integer (-1 where it is not one)."""

    starts: np.ndarray
    ends: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray

    @property
    def nbytes(self) -> int:
        """What keeping them adds to their layout (``starts`` and ``ends`` are views of the layout's offsets)."""
        return self.pixels.nbytes + self.labels.nbytes


def png_columns(layout: PlainLayout, data: bytes) -> PngColumns | None:
    """The columns of ``layout`` over ``data`` (the bytes it was parsed from, or equal ones); ``None`` where its
    samples differ in their members or lack a ``.png`` or a ``.cls``."""
    png, cls = layout.member_bounds(IMAGE), layout.member_bounds(LABEL)
    if png is None or cls is None:
        return None
    starts, ends = png
    everything = np.frombuffer(data, np.uint8)
    head = everything[np.minimum(starts.astype(np.int64)[:, None] + _HEAD, len(everything) - 1)]
    plain = ((ends - starts).astype(np.int64) > 33) & (head[:, :8] == _SIGNATURE).all(axis=1)
    plain &= (head[:, 24] == 8) & ((head[:, 25] == 0) | (head[:, 25] == 2)) & (head[:, 28] == 0)
    width, height = head[:, 16:20].astype(np.int64) @ _BIG_ENDIAN, head[:, 20:24].astype(np.int64) @ _BIG_ENDIAN
    pixels = np.where(plain, width * height, 0)
    labels = np.fromiter(
        (_label(data[s:e]) for s, e in zip(*(c.tolist() for c in cls), strict=True)), np.int64, count=len(starts)
    )
    return PngColumns(starts, ends, pixels, labels)


def _label(text: bytes) -> int:
    """``int(text)`` where that is a non-negative integer below 2**62, else -1 (the full decode decides)."""
    try:
        value = int(text)
    except ValueError:
        return -1
    return value if 0 <= value < 1 << 62 else -1


class PlainRows(Sequence[RawSample]):
    """The samples of a plain shard in memory: a ``RawSample`` built when asked for (``rows[i]``, one at a time:
    only the fused batch stage holds rows, and it asks only for those it hands to the full decode), and the columns
    it reads instead (``starts``, ``ends``, ``pixels``, ``labels``, ``keys``)."""

    def __init__(self, data: bytes, layout: PlainLayout, columns: PngColumns) -> None:
        self.data = data
        self.layout = layout
        self.keys = layout.keys()
        self.length = len(self.keys)
        self.starts: list[int] = columns.starts.tolist()
        self.ends: list[int] = columns.ends.tolist()
        self.pixels: list[int] = columns.pixels.tolist()
        self.labels: list[int] = columns.labels.tolist()

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> RawSample: ...

    @overload
    def __getitem__(self, index: slice) -> list[RawSample]: ...

    def __getitem__(self, index: int | slice) -> RawSample | list[RawSample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.length))]
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} of a shard of {self.length}")
        return self.layout.sample(self.data, index, self.keys[index])  # only this one: its members are copies

    def sample(self, index: int, ref: tuple[int, int]) -> RawSample:
        """Sample ``index`` as a ``RawSample`` placed at ``ref``: what a reader yields for that row."""
        raw = self[index]
        raw.ref = ref
        return raw


Row = tuple[PlainRows, int, Any]  # (rows, index in the shard, ref): one planned sample of a plain shard, unbuilt


def build_row(row: Row) -> RawSample:
    """The ``RawSample`` a reader without rows would have given for ``row``."""
    rows, index, ref = row
    return rows.sample(index, ref)
