"""The reader gives the same items and counts whether a shard is taken by position (in memory) or walked (streamed
from a temporary file past the memory limit): refused samples, a cut-off end and out-of-order plans included."""

from __future__ import annotations

import pytest
from tar_bytes import END, member, sample

from meddiffuse_stream.counters import Counters
from meddiffuse_stream.nodes.reading.reader import PlannedSampleReader, Skip
from meddiffuse_stream.nodes.source import DatasetSource
from meddiffuse_stream.shardfmt.manifest import ShardInfo
from meddiffuse_stream.shardfmt.tar import RawSample
from meddiffuse_stream.storage.location import Location

WHOLE = b"".join(sample(f"k{i}", png=bytes([i]) * 2000) for i in range(2))
REFUSED = member("k2.png", b"x" * 100) + member("k2.lnk", b"", kind=b"2")  # a link: the whole sample is refused
REST = b"".join(sample(f"k{i}", png=bytes([i]) * 2000) for i in range(3, 6))
CUT = WHOLE + REFUSED + REST[: len(REST) - 1500]  # k5's image cut short: a fatal problem at position 5
PLAN = [(0, 4), (0, 0), (0, 2), (0, 5), (0, 1), (0, 3)]


def _read(tmp_path, data: bytes, limit: int, refs: list) -> tuple[list, dict]:
    (tmp_path / "s.tar").write_bytes(data)
    source = DatasetSource(Location(str(tmp_path)), "train", (ShardInfo("s.tar", samples=6, bytes=len(data)),))
    counters = Counters()
    reader = PlannedSampleReader(source, refs, counters=counters, prefetch_bytes=limit)
    reader.reset(None)
    items = []
    for item in reader:
        if isinstance(item, RawSample):
            items.append(("sample", item.key, item.ref, item.members["png"][:1]))
        else:
            assert isinstance(item, Skip)
            items.append(("skip", item.ref, item.kind, item.reason.split(": ", 1)[1], item.key))
    return items, dict(counters)


@pytest.mark.parametrize("data", [WHOLE + REFUSED + REST + END, CUT], ids=["refused sample", "cut-off end"])
def test_in_memory_and_streamed_shards_read_alike(tmp_path, data):
    taken, taken_counts = _read(tmp_path, data, 64 << 20, PLAN)
    walked, walked_counts = _read(tmp_path, data, 4096, PLAN)
    assert taken == walked and taken_counts == walked_counts
    assert taken[0] == ("sample", "k4", (0, 4), b"\x04")
    assert taken[2][:3] == ("skip", (0, 2), "refused tar member") and taken[2][4] == "k2"
    assert taken[2][3] == "symbolic link member 'k2.lnk' refused"
    assert taken_counts["refused_members:symbolic"] == 1
    if data is CUT:
        assert taken[3][:3] == ("skip", (0, 5), "truncated or corrupt tar")
    else:
        assert taken[3] == ("sample", "k5", (0, 5), b"\x05")
