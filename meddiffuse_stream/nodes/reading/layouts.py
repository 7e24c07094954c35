"""Where the samples of verified shards sit, kept per process so a shard is parsed once, not every epoch.

Parsing a plain shard (:func:`~meddiffuse_stream.shardfmt.tar_fast.plain_layout`) costs ~5–9 µs a sample — a tenth
of decoding a 64 px PNG — and gives the same answer for the same bytes every time. A layout is kept under the
shard's sha256 (and the member limit it was parsed with), and only for bytes checked against that sha256 (hashed
now, unchanged since they were hashed, or from the verifying shard cache): equal bytes, same samples. Bounded by
:data:`LAYOUT_BYTES` (least recently used go first); shards without a sha256 are parsed every time. With the layout
goes what the fused batch stage reads of a shard whose samples all hold a ``.png`` and a ``.cls`` (see
:mod:`~meddiffuse_stream.nodes.reading.plain_rows`): such a shard comes back as :class:`~.plain_rows.PlainRows`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from ...shardfmt.tar import RawSample
from ...shardfmt.tar_fast import PlainLayout, plain_layout
from .plain_rows import PlainRows, PngColumns, png_columns

__all__ = ["LAYOUT_BYTES", "plain_samples"]

LAYOUT_BYTES = 64 << 20  # ~30 bytes a sample (three members, a short key), ~46 with PNG columns: ~1.5 M a process


class _Kept:
    """A layout and, once a reader asked for rows, its PNG columns (``None``: none asked yet, or none possible)."""

    __slots__ = ("columns", "columns_made", "layout")

    def __init__(self, layout: PlainLayout) -> None:
        self.layout = layout
        self.columns: PngColumns | None = None
        self.columns_made = False

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes + (self.columns.nbytes if self.columns is not None else 0)


_layouts: OrderedDict[tuple[str, int, int], _Kept] = OrderedDict()
_held = [0]
_lock = threading.Lock()


def plain_samples(
    data: bytes, max_member_bytes: int, sha256: str | None, rows: bool = False
) -> Sequence[RawSample] | None:
    """The samples of the plain shard ``data`` (``None`` if it is not plain), its layout reused when ``sha256`` —
    which the caller has checked ``data`` against — was seen before. With ``rows`` they come as
    :class:`PlainRows` where every sample has a ``.png`` and a ``.cls`` (the columns made once per layout)."""
    if sha256 is None:
        layout = plain_layout(data, max_member_bytes)
        if layout is None:
            return None
        return _served(data, layout, png_columns(layout, data) if rows else None)
    key = (sha256, len(data), max_member_bytes)
    with _lock:
        kept = _layouts.get(key)
        if kept is not None:
            _layouts.move_to_end(key)
    if kept is None:
        layout = plain_layout(data, max_member_bytes)
        if layout is None:
            return None
        kept = _keep(key, _Kept(layout))
    if rows and not kept.columns_made:
        _add_columns(key, kept, png_columns(kept.layout, data))
    return _served(data, kept.layout, kept.columns if rows else None)


def _served(data: bytes, layout: PlainLayout, columns: PngColumns | None) -> Sequence[RawSample]:
    return layout.samples(data) if columns is None else PlainRows(data, layout, columns)


def _keep(key: tuple[str, int, int], kept: _Kept) -> _Kept:
    """``kept`` under ``key`` (or the one another thread kept first), within the budget."""
    if kept.nbytes > LAYOUT_BYTES:
        return kept
    with _lock:
        if key in _layouts:
            return _layouts[key]
        _layouts[key] = kept
        _held[0] += kept.nbytes
        _trim()
    return kept


def _add_columns(key: tuple[str, int, int], kept: _Kept, columns: PngColumns | None) -> None:
    with _lock:
        if kept.columns_made:
            return
        kept.columns, kept.columns_made = columns, True
        if _layouts.get(key) is kept and columns is not None:
            _held[0] += columns.nbytes
            _trim()


def _trim() -> None:
    while _held[0] > LAYOUT_BYTES and _layouts:
        _, dropped = _layouts.popitem(last=False)
        _held[0] -= dropped.nbytes
