"""Where the samples of verified shards sit, kept per process so a shard is parsed once, not every epoch.

Parsing a plain shard (:func:`~meddiffuse_stream.shardfmt.tar_fast.plain_layout`) costs ~5–9 µs a sample — a tenth
of decoding a 64 px PNG — and gives the same answer for the same bytes every time. A layout is kept under the
shard's sha256 (and the member limit it was parsed with), and only for bytes checked against that sha256 (hashed
now, unchanged since they were hashed, or from the verifying shard cache): equal bytes, same samples. Bounded by
:data:`LAYOUT_BYTES` (least recently used go first); shards without a sha256 are parsed every time. With the layout
goes what the fused batch stage reads of a shard whose samples all hold a ``.png`` and a ``.cls`` (see
:mod:`~meddiffuse_stream.nodes.plain_rows`): such a shard comes back as :class:`~.plain_rows.PlainRows`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from ..shardfmt.tar import RawSample
from ..shardfmt.tar_fast import PlainLayout, plain_layout
from .plain_rows import PlainRows, PngColumns, png_columns

__all__ = ["LAYOUT_BYTES", "plain_samples"]

LAYOUT_BYTES = 64 << 20  # ~60 bytes a sample (three members, a short key, the PNG columns): ~1 million a process
_Kept = tuple[PlainLayout, PngColumns | None]
_layouts: OrderedDict[tuple[str, int, int], _Kept] = OrderedDict()
_held = [0]
_lock = threading.Lock()


def plain_samples(data: bytes, max_member_bytes: int, sha256: str | None) -> Sequence[RawSample] | None:
    """The samples of the plain shard ``data`` (``None`` if it is not plain) — as :class:`PlainRows` where they
    all have a ``.png`` and a ``.cls`` — its layout reused when ``sha256``, which the caller has checked ``data``
    against, was seen before."""
    if sha256 is None:
        kept = _parse(data, max_member_bytes)
    else:
        key = (sha256, len(data), max_member_bytes)
        with _lock:
            kept = _layouts.get(key)
            if kept is not None:
                _layouts.move_to_end(key)
        if kept is None:
            kept = _parse(data, max_member_bytes)
            if kept is not None:
                _keep(key, kept)
    if kept is None:
        return None
    layout, columns = kept
    return layout.samples(data) if columns is None else PlainRows(data, layout, columns)


def _parse(data: bytes, max_member_bytes: int) -> _Kept | None:
    layout = plain_layout(data, max_member_bytes)
    return None if layout is None else (layout, png_columns(layout, data))


def _keep(key: tuple[str, int, int], kept: _Kept) -> None:
    size = kept[0].nbytes + (kept[1].nbytes if kept[1] is not None else 0)
    if size > LAYOUT_BYTES:
        return
    with _lock:
        if key in _layouts:
            return
        _layouts[key] = kept
        _held[0] += size
        while _held[0] > LAYOUT_BYTES:
            _, (layout, columns) = _layouts.popitem(last=False)
            _held[0] -= layout.nbytes + (columns.nbytes if columns is not None else 0)
