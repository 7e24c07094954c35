"""A verified shard is parsed once per process: its layout, kept under its sha256, gives the same samples from equal
bytes read again; other bytes, unverified bytes and a full budget are parsed anew."""

from __future__ import annotations

import hashlib
import io

import pytest
from tar_bytes import END, member, sample

from meddiffuse_stream.nodes.reading import layouts
from meddiffuse_stream.nodes.reading.plain_rows import PlainRows
from meddiffuse_stream.shardfmt.tar import MAX_MEMBER_BYTES, iter_samples

ALIKE = b"".join(sample(f"k{i}", png=bytes([i]) * 700) for i in range(5)) + END
UNEVEN = member("a.png", b"1" * 50) + member("a.cls", b"0") + member("b.png", b"2") + member("c.json", b"{}") + END


@pytest.fixture
def parses(monkeypatch):
    monkeypatch.setattr(layouts, "_layouts", type(layouts._layouts)())
    monkeypatch.setattr(layouts, "_held", [0])
    calls = []
    real = layouts.plain_layout
    monkeypatch.setattr(layouts, "plain_layout", lambda data, limit: calls.append(len(data)) or real(data, limit))
    return calls


def _slow(data: bytes) -> list:
    return list(iter_samples(io.BytesIO(data), MAX_MEMBER_BYTES))


@pytest.mark.parametrize("data", [ALIKE, UNEVEN], ids=["alike", "uneven"])
def test_equal_bytes_read_again_give_the_same_samples_without_a_parse(parses, data):
    sha = hashlib.sha256(data).hexdigest()
    first = layouts.plain_samples(bytes(data), MAX_MEMBER_BYTES, sha)
    again = layouts.plain_samples(bytes(bytearray(data)), MAX_MEMBER_BYTES, sha)  # a new read: another object
    assert first == again == _slow(data) and len(parses) == 1
    assert again[0].members["png"] is not first[0].members["png"]  # sliced from the new bytes


def test_rows_are_served_only_when_asked_for_and_their_columns_made_once(parses, monkeypatch):
    made = []
    real = layouts.png_columns
    monkeypatch.setattr(layouts, "png_columns", lambda layout, data: made.append(1) or real(layout, data))
    sha = hashlib.sha256(ALIKE).hexdigest()
    assert type(layouts.plain_samples(ALIKE, MAX_MEMBER_BYTES, sha)) is list and not made  # a list, as ever
    held = layouts._held[0]
    rows = layouts.plain_samples(bytes(bytearray(ALIKE)), MAX_MEMBER_BYTES, sha, rows=True)
    again = layouts.plain_samples(ALIKE, MAX_MEMBER_BYTES, sha, rows=True)
    assert isinstance(rows, PlainRows) and isinstance(again, PlainRows) and len(made) == 1 and len(parses) == 1
    assert list(rows) == list(again) == _slow(ALIKE) and rows.labels == [1] * 5
    assert layouts._held[0] == held + 5 * 16  # the columns' own arrays (pixels, labels) are counted
    uneven = layouts.plain_samples(UNEVEN, MAX_MEMBER_BYTES, hashlib.sha256(UNEVEN).hexdigest(), rows=True)
    assert type(uneven) is list and uneven == _slow(UNEVEN)  # samples that differ in members: no rows


def test_other_bytes_unverified_bytes_and_another_member_limit_are_parsed(parses):
    layouts.plain_samples(ALIKE, MAX_MEMBER_BYTES, hashlib.sha256(ALIKE).hexdigest())
    layouts.plain_samples(UNEVEN, MAX_MEMBER_BYTES, hashlib.sha256(UNEVEN).hexdigest())
    layouts.plain_samples(ALIKE, MAX_MEMBER_BYTES, None)
    layouts.plain_samples(ALIKE, MAX_MEMBER_BYTES, None)
    assert layouts.plain_samples(ALIKE, 500, hashlib.sha256(ALIKE).hexdigest()) is None  # 700-byte members
    assert len(parses) == 5


def test_the_budget_drops_the_least_recently_used(parses, monkeypatch):
    shards = [b"".join(sample(f"s{n}k{i}") for i in range(40)) + END for n in range(3)]
    shas = [hashlib.sha256(s).hexdigest() for s in shards]
    one = layouts.plain_layout(shards[0], MAX_MEMBER_BYTES).nbytes
    monkeypatch.setattr(layouts, "LAYOUT_BYTES", 2 * one + one // 2)  # room for two
    parses.clear()
    for index in (0, 1, 0, 2, 0, 1):  # 2 pushes out 1 (0 was used since); 1 comes back, pushing out 2
        assert layouts.plain_samples(shards[index], MAX_MEMBER_BYTES, shas[index]) == _slow(shards[index])
    assert len(parses) == 4 and layouts._held[0] <= layouts.LAYOUT_BYTES
    assert [key[0] for key in layouts._layouts] == [shas[0], shas[1]]
