"""Where the samples of verified shards sit, kept per process so a shard is parsed once, not every epoch.

Parsing a plain shard (:func:`~meddiffuse_stream.shardfmt.tar_fast.plain_layout`) costs ~5–9 µs a sample — a tenth
of decoding a 64 px PNG — and gives the same answer for the same bytes every time. A layout is kept under the
shard's sha256 (and the member limit it was parsed with), and only for bytes checked against that sha256 (hashed
now, unchanged since they were hashed, or from the verifying shard cache): equal bytes, same samples. Bounded by
:data:`LAYOUT_BYTES` (least recently used go first); shards without a sha256 are parsed every time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..shardfmt.tar import RawSample
from ..shardfmt.tar_fast import PlainLayout, plain_layout

__all__ = ["LAYOUT_BYTES", "plain_samples"]

LAYOUT_BYTES = 64 << 20  # ~30 bytes a sample (three members, a short key): ~2 million samples per process
_layouts: OrderedDict[tuple[str, int, int], PlainLayout] = OrderedDict()
_held = [0]
_lock = threading.Lock()


def plain_samples(data: bytes, max_member_bytes: int, sha256: str | None) -> list[RawSample] | None:
    """The samples of the plain shard ``data`` (``None`` if it is not plain), its layout reused when ``sha256``
    — which the caller has checked ``data`` against — was seen before."""
    if sha256 is None:
        layout = plain_layout(data, max_member_bytes)
        return None if layout is None else layout.samples(data)
    key = (sha256, len(data), max_member_bytes)
    with _lock:
        layout = _layouts.get(key)
        if layout is not None:
            _layouts.move_to_end(key)
    if layout is None:
        layout = plain_layout(data, max_member_bytes)
        if layout is None:
            return None
        _keep(key, layout)
    return layout.samples(data)


def _keep(key: tuple[str, int, int], layout: PlainLayout) -> None:
    size = layout.nbytes
    if size > LAYOUT_BYTES:
        return
    with _lock:
        if key in _layouts:
            return
        _layouts[key] = layout
        _held[0] += size
        while _held[0] > LAYOUT_BYTES:
            _, dropped = _layouts.popitem(last=False)
            _held[0] -= dropped.nbytes
