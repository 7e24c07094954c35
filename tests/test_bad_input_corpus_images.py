"""Bad-input corpus, images, PCam and CSV manifests: bit depth and orientation kept, float ranges bounded where they
are parsed (never an all-black patch), and a manifest on object storage names only files below its own folder."""

from __future__ import annotations

import io
import json
import struct
import zlib

import h5py
import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from meddiffuse_stream.convert import ConversionError, ConvertOptions, CsvSource, convert_dataset
from meddiffuse_stream.convert.base import RejectError
from meddiffuse_stream.convert.images import image_from_bytes
from meddiffuse_stream.convert.pcam import PcamSource, parse_float_range, patch_to_stored
from meddiffuse_stream.storage import Location

pytestmark = pytest.mark.timeout(120)


def png_16_grey_alpha(grey: np.ndarray) -> bytes:
    """A 16-bit grey+alpha PNG (colour type 4), written by hand: Pillow cannot write one."""
    height, width = grey.shape
    pixels = np.zeros((height, width, 2), ">u2")
    pixels[..., 0], pixels[..., 1] = grey, 65535
    rows = np.zeros((height, 1 + width * 4), np.uint8)
    rows[:, 1:] = pixels.reshape(height, -1).view(np.uint8)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes()))
        + chunk(b"IEND", b"")
    )


def test_16_bit_grey_with_alpha_keeps_16_bits_of_grey():
    grey = (np.arange(48, dtype=np.uint32).reshape(6, 8) * 1361 + 3).astype(np.uint16)
    loaded = image_from_bytes(png_16_grey_alpha(grey))
    assert loaded.image.dtype == np.uint16 and loaded.image.shape == (6, 8)
    assert np.array_equal(loaded.image, grey)
    assert any("alpha" in note for note in loaded.notes)


_XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{}"/></rdf:RDF></x:xmpmeta>'
)


def _oriented(fmt: str, orientation: int, where: str = "exif") -> bytes:
    rng = np.random.default_rng(orientation)
    image = Image.fromarray(rng.integers(0, 256, (5, 9), dtype=np.uint8))  # not square: a rotation shows
    buffer = io.BytesIO()
    if where == "exif":
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format=fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
    elif fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", _XMP.format(orientation))
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        image.save(buffer, format=fmt, xmp=_XMP.format(orientation).encode(), quality=100)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize(("fmt", "where"), [("PNG", "exif"), ("JPEG", "exif"), ("TIFF", "exif"), ("PNG", "xmp")])
def test_exif_and_xmp_orientation_are_applied_and_recorded(fmt, where, orientation):
    data = _oriented(fmt, orientation, where)
    with Image.open(io.BytesIO(data)) as image:
        seen = np.asarray(ImageOps.exif_transpose(image).convert("L"))  # what every viewer shows
    loaded = image_from_bytes(data)
    assert loaded.image.shape == seen.shape and np.array_equal(loaded.image, seen), (fmt, where, orientation)
    assert loaded.meta["orientation"] == orientation


def test_orientation_of_a_16_bit_colour_png_is_applied_too():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (4, 7, 3), dtype=np.uint32).astype(np.uint16)
    from meddiffuse_stream.shardfmt import encode_png

    data = bytearray(encode_png(rgb))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    body = exif.tobytes()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    at = data.index(b"IDAT") - 4
    loaded = image_from_bytes(bytes(data[:at]) + chunk + bytes(data[at:]))
    assert loaded.image.dtype == np.uint16 and np.array_equal(loaded.image, np.rot90(rgb, -1))
    assert loaded.meta["orientation"] == 6


FLOAT_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    ("attrs", "words"),
    [
        ({"valid_min": 0.0, "valid_max": FLOAT_MAX}, "one grey level"),
        ({"valid_min": 0.0, "valid_max": np.inf}, "not finite"),
        ({"valid_range": [-np.inf, 1.0]}, "not finite"),
        ({"valid_range": [np.nan, 1.0]}, "not finite"),
        ({"range": [-FLOAT_MAX, FLOAT_MAX]}, "one grey level"),
    ],
)
def test_pcam_float_patches_with_a_range_too_wide_or_not_finite_are_rejected_never_black(tmp_path, attrs, words):
    rng = np.random.default_rng(0)
    src = tmp_path / "pcam"
    src.mkdir()
    prefix = src / "camelyonpatch_level_2_split_train"
    with h5py.File(f"{prefix}_x.h5", "w") as handle:
        dataset = handle.create_dataset("x", data=rng.random((3, 96, 96, 3), dtype=np.float32))
        for name, value in attrs.items():
            dataset.attrs[name] = value
    with h5py.File(f"{prefix}_y.h5", "w") as handle:
        handle.create_dataset("y", data=np.array([0, 1, 0], np.uint8).reshape(3, 1, 1, 1))
    with pytest.raises(ConversionError, match=r"all \d+ inputs were rejected"):
        convert_dataset(PcamSource(), str(src), str(tmp_path / "out"), ConvertOptions(), progress=False)
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert len(reasons) == 3 and all(words in reason for reason in reasons), reasons


def test_float_range_bounds_are_checked_where_they_are_parsed():
    for text in ("0,inf", "nan,1", "-inf,0"):
        with pytest.raises(ValueError, match="finite"):
            parse_float_range(text)
    patch = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    with pytest.raises(RejectError, match="one grey level"):
        patch_to_stored(patch, (0.0, FLOAT_MAX))
    flat = np.full((8, 8, 3), 0.25, np.float32)  # a truly flat patch is kept as it is
    assert patch_to_stored(flat, (0.0, 1.0))[0].min() == patch_to_stored(flat, (0.0, 1.0))[0].max()


@pytest.mark.s3
def test_s3_a_manifest_cannot_reach_outside_its_folder_or_into_another_bucket(tmp_path, s3_server, s3_bucket):
    import s3fs

    options = s3_server.storage_options
    fs = s3fs.S3FileSystem(**options)
    other = f"{s3_bucket}x"  # another bucket, readable with the same credentials
    fs.mkdir(other)
    image = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(image, format="PNG")
    for path in (f"{other}/x.png", f"{s3_bucket}/data/in.png", f"{s3_bucket}/secret/y.png"):
        fs.pipe(path, image.getvalue())
    rows = ["path,label", "in.png,a", f"../../{other[5:]}/x.png,b", "../secret/y.png,b", "sub/../in.png,a"]
    Location(f"{s3_bucket}/data", options).write_bytes("m.csv", "\n".join(rows).encode() + b"\n")
    summary = convert_dataset(
        CsvSource(),
        f"{s3_bucket}/data/m.csv",
        str(tmp_path / "out"),
        ConvertOptions(splits={"train": 1.0}),
        storage_options=options,
        progress=False,
    )
    rejects = {r["path"]: r["reason"] for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").open())}
    assert summary.converted == 1 and summary.rejected == 3, rejects
    for path in (f"../../{other[5:]}/x.png", "../secret/y.png"):
        assert "outside the manifest's folder" in rejects[path], rejects
    assert "duplicate of line 2" in rejects["sub/../in.png"]
