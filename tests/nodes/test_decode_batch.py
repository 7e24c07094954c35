"""The fused batch stage's fast path (a plain 8-bit .png and an integer .cls decoded straight into the batch) gives
the same batches, counts and errors as the full decode: every sample it does not take goes the full way, and a
sample it placed stands in for skipped slots like any other."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from torchdata.nodes import IterableWrapper

from meddiffuse_stream.counters import Counters
from meddiffuse_stream.nodes import decode_batch
from meddiffuse_stream.nodes.decode import DecodeOptions
from meddiffuse_stream.nodes.decode_batch import DecodeBatch
from meddiffuse_stream.nodes.errors import LoaderDataError
from meddiffuse_stream.nodes.items import PlannedSample
from meddiffuse_stream.nodes.reading.reader import Skip
from meddiffuse_stream.nodes.source import DatasetSource
from meddiffuse_stream.nodes.stages import decode_planned
from meddiffuse_stream.shardfmt.manifest import ShardInfo
from meddiffuse_stream.shardfmt.tar import RawSample
from meddiffuse_stream.storage.location import Location

SOURCE = DatasetSource(Location("/nonexistent"), "train", (ShardInfo("s.tar", samples=99),))
OPTIONS = DecodeOptions(num_classes=3, class_names=("a", "b", "c"))


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _pixels(seed: int, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def _sample(index: int, image: bytes, label: bytes = b"1", suffix: str = "cls", padding: bool = False):
    raw = RawSample(f"k{index}", {"png": image, suffix: label})
    raw.ref = (0, index)
    return PlannedSample(raw, padding)


def _grey_items() -> list[PlannedSample]:
    grey = [_png(_pixels(i, (6, 5))) for i in range(12)]
    return [
        PlannedSample(Skip((0, 0), "s.tar: sample 0 beyond the shard", kind="shard shorter than listed")),
        _sample(1, b"\x89PNG\r\n\x1a\n" + bytes(40)),  # a plain PNG header, no image: the full decode names it
        _sample(2, grey[2]),
        _sample(3, grey[3], b"c"),  # a class name, not an integer
        _sample(4, grey[4], b" 2\n"),  # an integer with spaces
        _sample(5, grey[5], b"7"),  # out of range
        _sample(6, _png(_pixels(6, (6, 5), np.uint16))),  # 16-bit grey: Pillow's path
        _sample(7, grey[7], b"0", suffix="txt"),  # the label in another member
        _sample(8, grey[8], padding=True),
        _sample(9, grey[9]),  # the last good one of its batch: stands in for the skipped slots of the next
        _sample(10, b"not a png at all"),
        _sample(11, _png(_pixels(11, (5, 6)))),  # another shape: refused by both ways, naming both samples
    ]


def _run(items: list[PlannedSample], dtype: str, fast: bool, on_error: str = "skip", batch: int = 5) -> tuple:
    counters = Counters()
    node = DecodeBatch(
        IterableWrapper(items), SOURCE, OPTIONS, batch, dtype=dtype, on_error=on_error, counters=counters
    )
    node._plain = fast
    node.reset(None)
    return [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in chunk.items()} for chunk in node], counters


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_the_fast_path_gives_the_full_decodes_batches_and_counts(dtype, monkeypatch):
    items = _grey_items()[:10] + [_sample(12, b"not a png at all")] * 2  # the second batch ends in two skips
    full_decodes = []
    monkeypatch.setattr(
        decode_batch, "decode_planned", lambda item, *rest: full_decodes.append(item) or decode_planned(item, *rest)
    )
    fast, fast_counts = _run(items, dtype, fast=True)
    assert [item.item.key for item in full_decodes[1:]] == ["k1", "k3", "k5", "k6", "k7", "k12", "k12"]  # others: fast
    full, full_counts = _run(items, dtype, fast=False)
    assert fast_counts == full_counts and fast_counts["skipped"] == 5 and fast_counts["padded"] == 5
    assert len(fast) == len(full) == 3
    for a, b in zip(fast, full, strict=True):
        assert a.keys() == b.keys() and a["image"].dtype == np.dtype(dtype)
        for name in a:
            assert np.array_equal(a[name], b[name]), name
    assert fast[0]["key"] == ["k4", "k4", "k2", "k3", "k4"] and fast[2]["key"] == ["k9", "k9"]  # last good fills


def test_rgb_and_uint8_take_the_fast_path_with_the_same_bytes():
    items = [_sample(i, _png(_pixels(i, (4, 7, 3)))) for i in range(6)] + [_sample(6, b"broken")]
    for dtype in ("float32", "uint8"):
        fast, full = _run(items, dtype, fast=True)[0], _run(items, dtype, fast=False)[0]
        assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(fast, full, strict=True))
        assert fast[0]["image"].shape == (5, 3, 4, 7)
    first = _run(items, "uint8", fast=True)[0][0]["image"][0]
    assert np.array_equal(first, _pixels(0, (4, 7, 3)).transpose(2, 0, 1))


@pytest.mark.parametrize("fast", [True, False])
def test_errors_raise_the_same_way(fast):
    items = _grey_items()
    with pytest.raises(LoaderDataError, match=r"k10\.png: not a readable image"):
        _run(items[9:11], "float32", fast, on_error="raise")
    with pytest.raises(ValueError, match=r"samples k9 \(1, 6, 5\) and k11 \(1, 5, 6\) differ in shape"):
        _run([items[9], items[11]], "float32", fast)
    with pytest.raises(ValueError, match="a 16-bit image in a loader delivering dtype='uint8'"):
        _run(items[2:7], "uint8", fast)
