"""The tar reader on hostile headers: every length field is checked, every case ends (a time limit fails a hang),
and every problem names its key and is one sample position the loader can skip and count."""

from __future__ import annotations

import io
import tarfile

import pytest
from tar_bytes import END, gnu_long_name, header, member, padded, pax, pax_record, sample

from meddiffuse_stream.shardfmt.tar import (
    MAX_EXTENDED_HEADER_BYTES,
    MAX_MEMBERS_PER_SAMPLE,
    RawSample,
    TarProblem,
    count_samples,
    iter_samples,
)

pytestmark = pytest.mark.timeout(10)  # a reader that loops fails here instead of hanging the suite


def _read(data: bytes, **kwargs) -> list:
    return list(iter_samples(io.BytesIO(data), **kwargs))


def _shape(items: list) -> list[tuple[str, str | None, bool]]:
    return [("sample", i.key, False) if isinstance(i, RawSample) else ("problem", i.key, i.fatal) for i in items]


@pytest.mark.parametrize(
    ("records", "why"),
    [
        (b"0 a=b\n", "does not fit"),  # a zero length once looped forever
        (b"-6 a=b\n", "no length"),
        (b"6 a=b\n" + b"x" * 100, "no length"),  # a good record, then garbage
        (b"5 a=b\n", "does not fit"),  # too short for its own text
        (b"99999999999999999999 a=b\n", "does not fit"),  # more than any header holds
        (b"900 a=b\n", "does not fit"),  # longer than the header
        (b"7 ab\n\n\n", "NAME=VALUE"),
        (b"\xd9\xa3 a=b\n", "no length"),  # a non-ASCII digit int() would take
        (b"11 size=-5\n", "not a number"),
    ],
)
def test_malformed_pax_records_end_the_shard_with_a_named_problem(records, why):
    items = _read(sample("a") + sample("good") + pax(records) + sample("next") + END)
    # "good" may have lost members to the damage, so it goes with the rest; "a" is whole
    assert _shape(items) == [("sample", "a", False), ("problem", None, True)]
    assert "PAX" in items[-1].reason and why in items[-1].reason


def test_pax_path_and_size_records_are_honoured():
    data = b"0123456789"
    shard = (
        pax(pax_record("path", "long/" + "k" * 150 + ".png") + pax_record("mtime", "1.5"))
        + member("ignored.png", b"png")
        + pax(pax_record("size", str(len(data))) + pax_record("path", "long/" + "k" * 150 + ".cls"))
        + header("short.cls", 0)  # the header says 0 bytes, the PAX record 10
        + padded(data)
        + END
    )
    items = _read(shard)
    assert _shape(items) == [("sample", "long/" + "k" * 150, False)]
    assert items[0].members == {"png": b"png", "cls": data}


def test_stock_pax_and_gnu_tars_read_as_tarfile_writes_them():
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
            for name, data in ((f"dir/{'n' * 120}.png", b"image"), (f"dir/{'n' * 120}.cls", b"0"), ("ü.png", b"x")):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1.25
                archive.addfile(info, io.BytesIO(data))
        items = _read(buffer.getvalue())
        assert _shape(items) == [("sample", f"dir/{'n' * 120}", False), ("sample", "ü", False)], fmt
        assert items[0].members == {"png": b"image", "cls": b"0"}


def test_gnu_long_names_are_bounded_and_must_be_utf8():
    long_key = "p" * 300
    items = _read(gnu_long_name(f"{long_key}.png") + member("x.png", b"a") + END)
    assert _shape(items) == [("sample", long_key, False)]
    huge = header("././@LongLink", MAX_EXTENDED_HEADER_BYTES + 1, b"L") + b"a" * 1024 + END
    items = _read(huge)
    assert _shape(items) == [("problem", None, True)] and "extended header" in items[0].reason
    bad = header("././@LongLink", 6, b"L") + padded(b"\xffbad.png") + member("x.png", b"a") + sample("next") + END
    items = _read(bad)
    assert _shape(items) == [("problem", "\udcffbad", False), ("sample", "next", False)]
    assert "not UTF-8" in items[0].reason
    links = header("././@LongLink", 10, b"K") + padded(b"target\0") + sample("after") + END  # a long link name
    assert _shape(_read(links)) == [("sample", "after", False)]


@pytest.mark.parametrize(
    ("size_field", "why"),
    [
        (b"-0000000017\0", "not octal"),
        (b"+0000000017\0", "not octal"),
        (b"0o000000017\0", "not octal"),
        (b"\xff" * 12, "negative"),  # base-256 with the sign bit set
        (b"\x81" + b"\0" * 11, "malformed base-256"),
    ],
)
def test_size_fields_are_octal_or_positive_base256(size_field, why):
    items = _read(sample("a") + sample("good") + header("bad.png", 0, size_field=size_field) + sample("next") + END)
    assert _shape(items) == [("sample", "a", False), ("problem", None, True)] and why in items[-1].reason


def test_base256_sizes_work_and_a_size_past_the_end_is_a_truncation():
    field = b"\x80" + (5).to_bytes(11, "big")
    items = _read(header("k.png", 0, size_field=field) + padded(b"12345") + END)
    assert items[0].members == {"png": b"12345"}
    huge = b"\x80" + (1 << 80).to_bytes(11, "big")
    items = _read(sample("good") + header("k.png", 0, size_field=huge) + END, max_member_bytes=1 << 20)
    assert _shape(items) == [("sample", "good", False), ("problem", "k", True)] and "truncated" in items[-1].reason


def test_members_per_sample_are_bounded_and_the_sample_is_one_refused_position():
    many = b"".join(member(f"big.m{i}", b"x") for i in range(MAX_MEMBERS_PER_SAMPLE + 5))
    items = _read(sample("a") + many + sample("b") + END)
    assert _shape(items) == [("sample", "a", False), ("problem", "big", False), ("sample", "b", False)]
    assert f"more than {MAX_MEMBERS_PER_SAMPLE} members" in items[1].reason


def test_a_refused_member_makes_its_whole_sample_one_position():
    shard = (
        sample("a")
        + member("b.png", b"1")
        + member("b.png", b"2")
        + member("b.cls", b"0")
        + member("c.png", b"x", kind=b"2")
        + member("c.cls", b"0")
        + sample("d")
        + END
    )
    items = _read(shard)
    assert _shape(items) == [
        ("sample", "a", False),
        ("problem", "b", False),
        ("problem", "c", False),
        ("sample", "d", False),
    ]


class _CountingFile(io.BytesIO):
    """A seekable in-memory file that counts the bytes it hands out."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_count_samples_reads_headers_only_and_agrees_with_the_reader():
    big = b"\x07" * (4 << 20)
    shard = b"".join(sample(f"k{i}", png=big) for i in range(5)) + member("k1.png", b"dup") + END
    stream = _CountingFile(shard)
    count, problem = count_samples(stream)
    assert problem is None and count == 6 == len(_read(shard))
    assert stream.bytes_read < 64 << 10, f"read {stream.bytes_read} bytes of {len(shard)} to count"
    count, problem = count_samples(io.BytesIO(shard[: len(shard) // 2]))
    assert problem is not None and problem.fatal and count == 2


def test_every_read_terminates_on_every_cut_of_a_hostile_shard():
    shard = (
        pax(pax_record("path", "p" * 200 + ".png"))
        + member("x", b"abc")
        + gnu_long_name("q" * 200 + ".cls")
        + member("y", b"1")
        + sample("z")
        + END
    )
    for cut in range(0, len(shard), 7):
        items = _read(shard[:cut])
        assert all(isinstance(i, (RawSample, TarProblem)) for i in items)
        assert sum(isinstance(i, TarProblem) and i.fatal for i in items) <= 1
