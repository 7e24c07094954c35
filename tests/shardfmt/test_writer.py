import hashlib
import io
import tarfile

import numpy as np
import pytest

from meddiffuse_stream.shardfmt import SHARD_MTIME, ShardWriter, decode_png, encode_png, encode_sample, make_key


def test_make_key_has_no_dots_or_slashes_and_stays_unique_when_long():
    assert make_key("mura", "XR.SHOULDER/patient 1") == "mura_XR_SHOULDER_patient_1"
    long_a, long_b = make_key("a" * 200 + "1"), make_key("a" * 200 + "2")
    assert long_a != long_b and len(long_a) <= 90 and "." not in long_a
    with pytest.raises(ValueError, match="cannot make a sample key"):
        make_key("...")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64),
        np.arange(256, dtype=np.uint8).reshape(16, 16),
        np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 65536, (5, 7, 3), dtype=np.uint16),  # 16-bit colour, written by us
    ],
)
def test_png_round_trip_is_bit_exact(array):
    decoded = decode_png(encode_png(array))
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


def test_png_refuses_what_it_cannot_store_faithfully():
    with pytest.raises(ValueError, match="8- or 16-bit grey or RGB"):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint16))
    with pytest.raises(ValueError, match="8- or 16-bit grey or RGB"):
        encode_png(np.zeros((4, 4), dtype=np.float32))


def test_16_bit_colour_png_is_a_standard_png_other_readers_agree_on():
    from PIL import Image

    array = np.random.default_rng(2).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    data = encode_png(array)
    with Image.open(io.BytesIO(data)) as image:  # Pillow opens it (as 8-bit RGB: the high bytes)
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (9, 6) and np.array_equal(np.asarray(image), (array >> 8).astype(np.uint8))


def _shard(samples):
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    offsets = [writer.add(s) for s in samples]
    size, digest = writer.close()
    return buffer.getvalue(), size, digest, offsets


def test_shard_is_plain_ustar_with_fixed_mtime_and_correct_offsets_and_hash():
    image = np.full((8, 8), 7, dtype=np.uint8)
    samples = [encode_sample(f"k{i}", image, i % 2, {"i": i}, roi=image > 0) for i in range(3)]
    data, size, digest, offsets = _shard(samples)
    assert size == len(data) and digest == hashlib.sha256(data).hexdigest()
    assert b"PaxHeader" not in data and b"ustar\x0000" in data
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
        assert [m.name for m in members[:4]] == ["k0.png", "k0.cls", "k0.json", "k0.roi.png"]
        assert {m.mtime for m in members} == {SHARD_MTIME} and not any(m.pax_headers for m in members)
        assert archive.extractfile("k1.cls").read() == b"1"
    for key, offset in zip(("k0", "k1", "k2"), offsets, strict=True):
        header = tarfile.TarInfo.frombuf(data[offset : offset + 512], "utf-8", "strict")
        assert header.name == f"{key}.png"


def test_same_input_gives_same_bytes():
    image = np.random.default_rng(1).integers(0, 65536, (9, 9), dtype=np.uint16)
    first = _shard([encode_sample("a", image, 0, {"x": 1})])[0]
    second = _shard([encode_sample("a", image, 0, {"x": 1})])[0]
    assert first == second


def test_duplicate_key_in_a_shard_is_refused():
    sample = encode_sample("dup", np.zeros((2, 2), np.uint8), 0, {})
    writer = ShardWriter(io.BytesIO())
    writer.add(sample)
    with pytest.raises(ValueError, match="duplicate sample key 'dup'"):
        writer.add(sample)


def test_label_must_be_an_integer():
    with pytest.raises(ValueError, match="label must be an integer"):
        encode_sample("a", np.zeros((2, 2), np.uint8), "1", {})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "size"), [("a.png", 0), ("k" * 92 + ".roi.png", 12345), ("x.json", 8**11 - 1)])
def test_ustar_header_is_byte_identical_to_tarfile(name, size):
    from meddiffuse_stream.shardfmt.writer import ustar_header

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, SHARD_MTIME, 0o444, "", ""
    assert ustar_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def test_ustar_header_refuses_long_names():
    from meddiffuse_stream.shardfmt.writer import ustar_header

    with pytest.raises(ValueError, match="100 bytes"):
        ustar_header("n" * 101, 1)
