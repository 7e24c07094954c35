"""The in-memory fast path gives exactly what the streaming reader gives, or steps aside (None) — never another
answer: plain shards from every writer, every hand-made oddity, and thousands of random corruptions."""

import io
import tarfile

import numpy as np
import pytest
from tar_bytes import END, gnu_long_name, header, member, padded, pax, pax_record, sample

from meddiffuse_stream.shardfmt.tar import MAX_MEMBER_BYTES, iter_samples
from meddiffuse_stream.shardfmt.tar_fast import parse_plain


def _slow(data: bytes, limit: int = MAX_MEMBER_BYTES) -> list:
    return list(iter_samples(io.BytesIO(data), limit))


def _agrees(data: bytes, limit: int = MAX_MEMBER_BYTES) -> bool:
    fast = parse_plain(data, limit)
    return fast is None or fast == _slow(data, limit)


def _tarfile_shard(fmt: int, keys: int = 6) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(fmt)
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for index in range(keys):
            for suffix in ("png", "cls", "roi.png"):
                data = rng.bytes(int(rng.integers(0, 1500)))
                info = tarfile.TarInfo(f"part-{index % 2}/s{index:03d}.{suffix}")
                info.size, info.mtime = len(data), 1_700_000_000
                archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_plain_shards_of_any_tarfile_format_take_the_fast_path_with_the_same_samples(fmt):
    data = _tarfile_shard(fmt)
    fast = parse_plain(data, MAX_MEMBER_BYTES)
    assert fast is not None and fast == _slow(data)
    assert [s.key for s in fast] == [f"part-{i % 2}/s{i:03d}" for i in range(6)]
    assert set(fast[0].members) == {"png", "cls", "roi.png"}


def test_this_projects_writer_and_keys_without_suffix():
    data = sample("a") + member("b", b"no suffix") + member("c.d.e", b"x") + END
    fast = parse_plain(data, MAX_MEMBER_BYTES)
    assert fast == _slow(data) and [s.key for s in fast] == ["a", "b", "c"] and fast[2].members == {"d.e": b"x"}


ODDITIES = {
    "pax path": pax(pax_record("path", "long/" * 30 + "k.png")) + member("x.png", b"1") + END,
    "gnu long name": gnu_long_name("g" * 150 + ".png") + member("x.png", b"1") + END,
    "directory": member("folder/", b"", b"5") + sample("a") + END,
    "symlink": member("link.png", b"", b"2") + sample("a") + END,
    "absolute path": member("/etc/passwd.png", b"1") + END,
    "parent path": member("../up.png", b"1") + END,
    "dot component": member("./a.png", b"1") + END,
    "dots inside a name": member("a..b.png", b"1") + END,
    "space in a name": member("a b.png", b"1") + END,
    "non-ASCII name": member("ü.png", b"1") + END,
    "duplicate suffix": member("a.png", b"1") + member("a.png", b"2") + END,
    "key comes back": sample("a") + sample("b") + member("a.json", b"{}") + END,
    "truncated member": member("a.png", b"1" * 600)[:700],
    "no end block": sample("a"),
    "empty archive": END,
    "nothing at all": b"",
    "size field with spaces": header("a.png", 3, size_field=b"         3 \0") + padded(b"abc") + END,
    "base-256 size": header("a.png", 3, size_field=b"\x80" + b"\0" * 10 + b"\x03") + padded(b"abc") + END,
    "bad checksum": member("a.png", b"1")[:148] + b"0000000\0" + member("a.png", b"1")[156:] + END,
    "over the member limit": member("a.png", b"1" * 2000) + END,
    "uneven samples, suffixes in a repeating order": b"".join(
        member(name, b"1") for name in ("a.png", "a.cls", "b.png", "c.cls", "c.png", "c.cls")
    )
    + END,
    "trailing bytes after the end": sample("a") + END + member("z.png", b"1"),
    "a NUL inside a name": member("a.png", b"1")[:3] + b"\0" + member("a.png", b"1")[4:] + END,
}


@pytest.mark.parametrize("case", sorted(ODDITIES))
def test_every_oddity_steps_aside_or_agrees(case):
    data = ODDITIES[case]
    assert _agrees(data, limit=1000)


def test_refusals_are_left_to_the_streaming_reader():
    for case in (
        "absolute path",
        "parent path",
        "duplicate suffix",
        "key comes back",
        "truncated member",
        "bad checksum",
        "over the member limit",
        "pax path",
        "gnu long name",
    ):
        assert parse_plain(ODDITIES[case], 1000) is None, case


def test_random_corruptions_never_give_another_answer():
    rng = np.random.default_rng(7)
    base = _tarfile_shard(tarfile.USTAR_FORMAT, keys=4)
    fast_taken = 0
    for _ in range(1500):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            where = int(rng.integers(0, len(data)))
            data[where] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            data = data[: int(rng.integers(0, len(data)))]
        data = bytes(data)
        assert _agrees(data), f"disagrees on a corruption of seed 7 ({len(data)} bytes)"
        fast_taken += parse_plain(data, MAX_MEMBER_BYTES) is not None
    assert fast_taken > 100  # corruptions inside member data keep the shard plain


def _ustar_inside(data: bytes) -> bytes:
    """A member whose data holds a block that looks like a header from afar (``ustar`` where the magic goes)."""
    block = bytearray(1024)
    block[512 + 257 : 512 + 262] = b"ustar"
    return bytes(block)


@pytest.mark.parametrize(
    "samples",
    [
        sample("a") + member("b.png", _ustar_inside(b"")) + member("b.cls", b"1") + END,  # a false header: walked
        member("a.png", b"1") + member("a.cls", b"0") + member("b.png", b"2") + member("c.cls", b"1") + END,  # uneven
        member("d/a.png", b"1") + member("d/a.seg.png", b"2") + member("e.f/b.png", b"3") + END,  # folders, dots
    ],
)
def test_shards_found_at_once_or_walked_give_the_streaming_readers_samples(samples):
    fast = parse_plain(samples, MAX_MEMBER_BYTES)
    assert fast is not None and fast == _slow(samples)


def test_a_suffix_twice_in_samples_of_another_size_is_refused_not_regrouped():
    """Suffixes that repeat with the width of the first sample must not pass as samples all alike."""
    data = ODDITIES["uneven samples, suffixes in a repeating order"]
    assert parse_plain(data, MAX_MEMBER_BYTES) is None and any(not hasattr(i, "members") for i in _slow(data))
