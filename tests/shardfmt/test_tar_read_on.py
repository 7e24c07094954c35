"""Nothing in a shard is dropped without a word: a zero block or a second archive inside a shard is read on
(garbage after the end is a named problem), member suffixes match case-insensitively and ``.gz`` members are
decompressed within the member limit, as WebDataset reads them; the fast path agrees or steps aside."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from tar_bytes import BLOCK, END, member, sample

from meddiffuse_stream.shardfmt.tar import RawSample, TarProblem, count_samples, iter_samples
from meddiffuse_stream.shardfmt.tar_fast import parse_plain


def _read(data: bytes, limit: int = 1 << 20) -> list:
    items = list(iter_samples(io.BytesIO(data), limit))
    count, problem = count_samples(io.BytesIO(data), limit)
    fatal = bool(items) and isinstance(items[-1], TarProblem) and items[-1].fatal
    assert count == len(items) - fatal and (problem is not None) == fatal, "counting and reading disagree"
    fast = parse_plain(data, limit)
    assert fast is None or fast == items, "the fast path gave another answer"
    return items


def _keys(items: list) -> list[str]:
    return [i.key for i in items if isinstance(i, RawSample)]


def _tarfile(keys: list[str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for key in keys:
            for suffix, data in (("png", b"p" * 700), ("cls", b"1")):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return out.getvalue()  # two zero blocks and zero padding to tarfile's 10 KiB record


def test_a_second_archive_after_the_first_is_read_on():
    data = _tarfile(["a", "b"]) + _tarfile(["c", "d", "e"])
    assert _keys(_read(data)) == ["a", "b", "c", "d", "e"]
    assert parse_plain(data, 1 << 20) is None, "the fast path leaves it to the streaming reader"
    assert parse_plain(_tarfile(["a", "b"]), 1 << 20) is not None, "zero padding alone is still plain"


def test_a_zero_block_inside_a_shard_is_read_past():
    items = _read(sample("a") + b"\0" * BLOCK + sample("b") + END)
    assert _keys(items) == ["a", "b"] and all(isinstance(i, RawSample) for i in items)


def test_bytes_after_the_end_that_are_not_a_tar_are_a_named_problem():
    items = _read(sample("a") + END + b"garbage!" * 64 + b"\0" * 512)
    assert _keys(items) == ["a"]
    assert isinstance(items[-1], TarProblem) and items[-1].fatal and "corrupt tar header" in items[-1].reason
    items = _read(sample("a") + END + b"\0" * 100)  # padding cut short of a block: still the end
    assert _keys(items) == ["a"] and len(items) == 1


def test_suffixes_match_in_any_case():
    data = member("n01.JPEG", b"jpeg") + member("n01.CLS", b"3") + member("n02.Png", b"png") + member("n02.cls", b"4")
    items = _read(data + END)
    assert [sorted(i.members) for i in items] == [["cls", "jpeg"], ["cls", "png"]]
    assert items[0].members["jpeg"] == b"jpeg"
    refused = _read(member("x.PNG", b"1") + member("x.png", b"2") + END)
    assert isinstance(refused[0], TarProblem) and "appears twice" in refused[0].reason


def test_gzipped_members_are_decompressed_within_the_member_limit():
    data = member("a.png", b"png") + member("a.cls.gz", gzip.compress(b"2")) + member("b.json.GZ", gzip.compress(b"{}"))
    items = _read(data + END)
    assert items[0].members == {"png": b"png", "cls": b"2"} and items[1].members == {"json": b"{}"}
    bomb = gzip.compress(b"\0" * (1 << 20 + 1))
    items = _read(member("x.png", b"1") + member("x.cls.gz", bomb) + sample("y") + END, limit=1 << 20)
    assert isinstance(items[0], TarProblem) and "more than the 1048576-byte member limit" in items[0].reason
    assert items[0].key == "x" and _keys(items) == ["y"], "the bomb refuses its sample only"
    items = _read(member("z.cls.gz", b"not gzip") + sample("w") + END)
    assert "is not valid gzip" in items[0].reason and _keys(items) == ["w"]
    items = _read(member("v.cls.gz", gzip.compress(b"12345")[:-6]) + END)
    assert "cut short" in items[0].reason


@pytest.mark.parametrize("cut", [None, 0.5, -5])
def test_a_gzip_compressed_shard_streams_and_a_corrupt_one_is_a_named_problem(cut):
    compressed = gzip.compress(_tarfile(["a", "b", "c"]))
    if cut is None:
        assert _keys(_read(compressed)) == ["a", "b", "c"]
        return
    items = _read(compressed[: int(len(compressed) * cut) if cut > 0 else cut])
    assert isinstance(items[-1], TarProblem) and items[-1].fatal
    assert "corrupt or cut-short gzip stream" in items[-1].reason
