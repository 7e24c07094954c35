"""A plain shard served as rows gives what its parsed samples give: the same RawSamples when asked for, and through
the fused batch stage the same batches, counts and errors — every row whose PNG header or label is not plain, or
whose bytes libspng refuses, takes the full decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tar_bytes import END, member, sample

from meddiffuse_stream.counters import Counters
from meddiffuse_stream.nodes import decode_batch
from meddiffuse_stream.nodes.decode import DecodeOptions
from meddiffuse_stream.nodes.decode_batch import DecodeBatch
from meddiffuse_stream.nodes.errors import LoaderDataError
from meddiffuse_stream.nodes.items import PlannedSample
from meddiffuse_stream.nodes.read import ReadSamples
from meddiffuse_stream.nodes.reading.plain_rows import PlainRows, png_columns
from meddiffuse_stream.nodes.source import DatasetSource
from meddiffuse_stream.shardfmt.manifest import ShardInfo
from meddiffuse_stream.shardfmt.tar import MAX_MEMBER_BYTES, RawSample, iter_samples
from meddiffuse_stream.shardfmt.tar_fast import plain_layout
from meddiffuse_stream.storage.location import Location

OPTIONS = DecodeOptions(num_classes=3, class_names=("a", "b", "c"))


def _png(array: np.ndarray, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", **save)
    return out.getvalue()


def _pixels(seed: int, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


MEMBERS = [  # (png, cls) of each sample, in shard order
    (_png(_pixels(0, (6, 5))), b"1"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), b"1"),  # a plain header, no image: libspng refuses, the full decode names it
    (_png(_pixels(2, (6, 5))), b"c"),  # a class name, not an integer
    (_png(_pixels(3, (6, 5))), b" 2\n"),  # an integer with spaces
    (_png(_pixels(4, (6, 5))), b"7"),  # out of range
    (_png(_pixels(5, (6, 5), np.uint16)), b"0"),  # 16-bit grey: Pillow's path
    (_png(_pixels(6, (6, 5))), b"-1"),  # negative
    (_png(_pixels(7, (6, 5)), optimize=True), b"2"),
    (_png(_pixels(8, (6, 5, 3))), b"0"),  # RGB among grey: refused, naming both samples
    (b"not a png at all", b"1"),
    (_png(_pixels(10, (6, 5)).astype(bool)), b"1"),  # 1-bit grey: not plain, Pillow's path
    (_png(_pixels(11, (6, 5))), b"2"),
]
SHARD = b"".join(sample(f"k{i}", png, cls) for i, (png, cls) in enumerate(MEMBERS)) + END


def _rows(data: bytes = SHARD) -> PlainRows:
    layout = plain_layout(data, MAX_MEMBER_BYTES)
    assert layout is not None
    columns = png_columns(layout, data)
    assert columns is not None
    return PlainRows(data, layout, columns)


def test_rows_are_the_parsed_samples_and_their_columns_say_what_is_plain():
    rows = _rows()
    parsed = list(iter_samples(io.BytesIO(SHARD)))
    assert list(rows) == parsed and len(rows) == 12
    assert rows[-1] == parsed[-1] and rows[2:4] == parsed[2:4]
    with pytest.raises(IndexError):
        rows[12]
    assert rows.sample(3, (4, 3)).ref == (4, 3)
    assert rows.labels == [1, 1, -1, 2, 7, 0, -1, 2, 0, 1, 1, 2]
    assert rows.pixels == [30, 0, 30, 30, 30, 0, 30, 30, 30, 0, 0, 30]  # the header-only one: 0×0 pixels
    assert [SHARD[a:b] for a, b in zip(rows.starts, rows.ends, strict=True)] == [png for png, _ in MEMBERS]


def test_shards_whose_samples_differ_in_members_have_no_columns():
    other = sample("a") + member("b.png", b"x") + member("b.json", b"{}") + END
    assert png_columns(plain_layout(other, MAX_MEMBER_BYTES), other) is None
    no_label = member("a.png", b"x") + member("b.png", b"y") + END
    assert png_columns(plain_layout(no_label, MAX_MEMBER_BYTES), no_label) is None


class _Rows:
    """A source handing rows over as ReadSamples(rows=True) does."""

    def __init__(self, items: list, padding: list[bool]) -> None:
        self.items, self.padding, self.at = items, padding, 0

    def reset(self, initial_state=None) -> None:
        self.at = 0

    def take_rows(self, count: int) -> tuple[list, list[bool]]:
        start, self.at = self.at, min(self.at + count, len(self.items))
        return self.items[start : self.at], self.padding[start : self.at]

    def state_dict(self) -> dict:
        return {"position": self.at}


def _batches(items: list, padding: list[bool], dtype: str, on_error: str = "skip", as_rows: bool = True) -> tuple:
    counters = Counters()
    source = _Rows(items, padding)
    if not as_rows:  # the same samples, built, through the way every other source takes
        from torchdata.nodes import IterableWrapper

        built = [PlannedSample(row[0].sample(row[1], row[2]), pad) for row, pad in zip(items, padding, strict=True)]
        source = IterableWrapper(built)
    dataset = DatasetSource(Location("/nonexistent"), "train", (ShardInfo("s.tar", samples=12),))
    node = DecodeBatch(source, dataset, OPTIONS, 4, dtype=dtype, on_error=on_error, counters=counters)
    node.reset(None)
    return [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in chunk.items()} for chunk in node], counters


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_rows_give_the_batches_and_counts_of_built_samples(dtype, monkeypatch):
    placed = []
    real = decode_batch._Builder.place_row

    def spy(self, slot, row, padding):  # which rows the fast way placed (the others fall back)
        taken = real(self, slot, row, padding)
        if taken:
            placed.append(row[1])
        return taken

    monkeypatch.setattr(decode_batch._Builder, "place_row", spy)
    rows = _rows()
    order = [3, 0, 7, 2, 11, 4, 6, 1, 9, 10, 5, 0]  # samples 8 (RGB) left out; 0 again as padding
    items = [(rows, i, (0, i)) for i in order]
    padding = [False] * 11 + [True]
    fast, fast_counts = _batches(items, padding, dtype)
    assert placed == [3, 0, 7, 11, 0]  # plain rows; the others took the full decode
    full, full_counts = _batches(items, padding, dtype, as_rows=False)
    assert fast_counts == full_counts and fast_counts["yielded"] == 8 and fast_counts["padded"] == 4
    assert fast_counts["skipped:label out of range"] == 2 and fast_counts["skipped:unreadable image"] == 2
    for a, b in zip(fast, full, strict=True):
        assert a.keys() == b.keys() and a["image"].dtype == np.dtype(dtype)
        for name in a:
            assert np.array_equal(a[name], b[name]), name
    assert fast[0]["key"] == ["k3", "k0", "k7", "k2"] and fast[0]["label"].tolist() == [2, 1, 2, 2]  # k2: by name
    assert fast[1]["key"] == ["k11"] * 4  # k4, k6 out of range, k1 unreadable: the last good one stands in
    assert fast[2]["key"] == ["k0", "k10", "k5", "k0"] and fast[2]["is_padding"].tolist() == [True, False, False, True]


def test_rows_raise_as_built_samples_do():
    rows = _rows()
    with pytest.raises(LoaderDataError, match=r"k1\.png: not a readable image"):
        _batches([(rows, i, (0, i)) for i in (0, 1)], [False, False], "float32", on_error="raise")
    with pytest.raises(ValueError, match=r"samples k0 \(1, 6, 5\) and k8 \(3, 6, 5\) differ in shape"):
        _batches([(rows, i, (0, i)) for i in (0, 8)], [False, False], "float32")


def test_a_reader_asked_for_rows_hands_them_over_only_through_take_rows(tmp_path):
    (tmp_path / "s.tar").write_bytes(SHARD)
    source = DatasetSource(Location(str(tmp_path)), "train", (ShardInfo("s.tar", samples=12, bytes=len(SHARD)),))
    from meddiffuse_stream.nodes.epochs import EpochSource

    plan = EpochSource(
        (12,), 4, seed=3, rank=0, world_size=1, num_workers=1, shuffle=True, drop_last=False, buffer_size=12, even=True
    ).plan_for(0)
    as_rows, built, plain = (ReadSamples(source, plan, rows=rows) for rows in (True, True, False))
    for node in (as_rows, built, plain):
        node.reset(None)
    items, padding = as_rows.take_rows(12)
    assert all(type(item) is tuple and type(item[0]) is PlainRows for item in items)
    assert plain._reader.rows is False  # the old way: the parsed list, no rows anywhere
    taken = built.take(5) + [next(built) for _ in range(7)]
    expected = [next(plain) for _ in range(12)]
    assert [(p.item.key, p.item.ref, p.padding) for p in taken] == [
        (p.item.key, p.item.ref, p.padding) for p in expected
    ]
    assert [(rows.keys[index], ref) for rows, index, ref in items] == [(p.item.key, p.item.ref) for p in expected]
    assert all(type(p.item) is RawSample for p in taken) and padding == [p.padding for p in expected]
