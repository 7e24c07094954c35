"""Depth and frames kept: 16-bit colour stored 16-bit (or refused with a reason), float patches scaled by their
documented range (or refused), multi-page images following --frames, and what the loader reads back."""

import io
import struct

import numpy as np
import pytest
import torch
from builders import make_imagefolder, make_pcam, write_image
from PIL import Image
from readback import check_accounting, load_dataset

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, PcamSource, convert_dataset
from meddiffuse_stream.convert.base import ReadRules, RejectError
from meddiffuse_stream.convert.images import image_from_bytes
from meddiffuse_stream.shardfmt import decode_png, encode_png


def _png48(array: np.ndarray) -> bytes:
    return encode_png(array)  # the shard format's own 16-bit RGB writer; Pillow cannot write it


def _tiff48(array: np.ndarray) -> bytes:
    """A minimal uncompressed 16-bit-per-channel RGB TIFF (Pillow reads only the high byte of each channel)."""
    height, width, _ = array.shape
    data = array.astype("<u2").tobytes()
    entries = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 3, 134),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 140),
        (277, 3, 1, 3),
        (278, 3, 1, height),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
    ]
    out = b"II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, kind, count, value in entries:
        out += (
            struct.pack("<HHIHH", tag, kind, count, value, 0)
            if kind == 3 and count == 1
            else struct.pack("<HHII", tag, kind, count, value)
        )
    return out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data


def test_48_bit_png_is_stored_at_16_bits_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (12, 12, 3), dtype=np.uint16)
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "deep.png").write_bytes(_png48(deep))
    make_imagefolder(tmp_path / "in", {"a": 2, "b": 3}, size=12)
    loaded = image_from_bytes(_png48(deep))
    assert loaded.image.dtype == np.uint16 and np.array_equal(loaded.image, deep)
    out = tmp_path / "out"
    convert_dataset(
        ImageFolderSource(),
        str(tmp_path / "in"),
        str(out),
        ConvertOptions(splits={"train": 1.0}, channels=3),
        progress=False,
    )
    dataset = load_dataset(out)
    check_accounting(dataset)
    assert np.array_equal(decode_png(dataset["samples"]["a_deep"]["png"]), deep)
    row = next(r for r in dataset["index"] if r["key"] == "a_deep")
    assert (row["bit_depth"], row["channels"]) == (16, 3)
    with MedDiffuseLoader(str(out), 6, shuffle=False, as_dict=True) as loader:
        batches = list(loader)
    image = next(b["image"][b["key"].index("a_deep")] for b in batches if "a_deep" in b["key"])
    assert image.dtype == torch.float32
    assert torch.allclose(image, torch.from_numpy(deep.transpose(2, 0, 1) / 65535).float(), atol=1e-6)


def test_16_bit_colour_tiff_is_refused_with_the_reason_not_truncated():
    deep = np.random.default_rng(1).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    with pytest.raises(RejectError, match="16-bit colour TIFF: Pillow reads only 8 bits"):
        image_from_bytes(_tiff48(deep))


def _pages(fmt: str, sizes: list[tuple[int, int]]) -> bytes:
    pages = [Image.fromarray(np.full((h, w), 40 * i, np.uint8)) for i, (w, h) in enumerate(sizes)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format=fmt, save_all=True, append_images=pages[1:])
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])  # a TIFF stack and an APNG
def test_multi_page_images_follow_frames(fmt):
    data = _pages(fmt, [(8, 6)] * 5)
    middle = image_from_bytes(data)
    assert middle.meta["frame_index"] == 2 and middle.image[0, 0] == 80 and middle.notes
    every = image_from_bytes(data, rules=ReadRules(frames="all"))
    assert [int(f[0, 0]) for f in every.frames] == [0, 40, 80, 120, 160]
    with pytest.raises(RejectError, match="--frames reject"):
        image_from_bytes(data, rules=ReadRules(frames="reject"))
    with pytest.raises(RejectError, match="use --frames middle"):
        image_from_bytes(data, rules=ReadRules(frames="all", max_pixels=8 * 6 * 4))


def test_a_tiff_pyramid_is_not_silently_reduced_to_a_thumbnail():
    pyramid = _pages("TIFF", [(16, 16), (8, 8), (4, 4)])
    with pytest.raises(RejectError, match="pages differ in size"):
        image_from_bytes(pyramid)
    assert [f.shape for f in image_from_bytes(pyramid, rules=ReadRules(frames="all")).frames] == [
        (16, 16),
        (8, 8),
        (4, 4),
    ]


def test_every_frame_becomes_a_sample_and_the_books_count_inputs(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 2, "b": 2}, size=8)
    (src / "a" / "stack.tif").write_bytes(_pages("TIFF", [(8, 8)] * 3))
    summary = convert_dataset(
        ImageFolderSource(),
        str(src),
        str(tmp_path / "out"),
        ConvertOptions(splits={"train": 1.0}, frames="all"),
        progress=False,
    )
    assert (summary.found, summary.converted, summary.samples) == (5, 5, 7)
    dataset = load_dataset(tmp_path / "out")
    assert dataset["info"]["counts"] == {"found": 5, "converted": 5, "rejected": 0, "samples": 7}
    frames = sorted((r["key"], r["frame_index"]) for r in dataset["index"] if r["source"] == "a/stack.tif")
    assert frames == [("a_stack_f0000", 0), ("a_stack_f0001", 1), ("a_stack_f0002", 2)]
    assert "(7 samples)" in summary.table()


def _float_pcam(root, values, attrs=None):
    import h5py

    make_pcam(root, rows={"valid": len(values)})
    with h5py.File(root / "camelyonpatch_level_2_split_valid_x.h5", "w") as handle:
        dataset = handle.create_dataset("x", data=np.stack(values).astype(np.float32))
        for name, value in (attrs or {}).items():
            dataset.attrs[name] = value
    return root


def test_float_pcam_patches_are_scaled_by_their_documented_range_or_rejected(tmp_path):
    rng = np.random.default_rng(0)
    eight_bit = rng.integers(0, 256, (3, 96, 96, 3))
    patches = [eight_bit[0] / 255, eight_bit[1] / 255, eight_bit[2] / 255 * 1.5]  # the last is out of range
    src = _float_pcam(tmp_path / "doc", patches, {"valid_range": [0.0, 1.0]})
    convert_dataset(PcamSource(), str(src), str(tmp_path / "o1"), ConvertOptions(), progress=False)
    dataset = load_dataset(tmp_path / "o1")
    check_accounting(dataset)
    stored = decode_png(dataset["samples"]["pcam_val_0000000"]["png"])
    assert stored.dtype == np.uint8 and np.array_equal(stored, eight_bit[0])  # exact: floats made from 8 bits
    assert "outside its documented range 0..1" in dataset["rejects"][0]["reason"]
    bare = _float_pcam(tmp_path / "bare", patches[:2])
    with pytest.raises(Exception, match="nothing could be converted"):
        convert_dataset(PcamSource(), str(bare), str(tmp_path / "o2"), ConvertOptions(), progress=False)
    assert "pass --float-range" in (tmp_path / "o2" / "rejects.jsonl").read_text()
    fine = [rng.random((96, 96, 3)), rng.random((96, 96, 3))]  # not 8-bit values: kept at 16 bits
    src = _float_pcam(tmp_path / "fine", fine)
    convert_dataset(
        PcamSource(float_range=(0.0, 1.0)), str(src), str(tmp_path / "o3"), ConvertOptions(), progress=False
    )
    stored = decode_png(load_dataset(tmp_path / "o3")["samples"]["pcam_val_0000001"]["png"])
    assert stored.dtype == np.uint16 and np.abs(stored / 65535 - fine[1]).max() < 1e-4


def test_mixed_sizes_and_channels_are_warned_and_channels_unify_them(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 3, "b": 3}, size=8)
    write_image(src / "a" / "wide.png", np.zeros((8, 12), np.uint8))
    write_image(src / "b" / "colour.png", np.full((8, 8, 3), (200, 10, 10), np.uint8))
    summary = convert_dataset(ImageFolderSource(), str(src), str(tmp_path / "o1"), ConvertOptions(), progress=False)
    text = summary.table()
    assert "warning: images have 2 different sizes (8x8: 7, 12x8: 1)" in text and "--resize" in text
    assert "warning: grey and colour images are mixed (1 channel: 7, 3 channels: 1)" in text
    assert "--channels 1 or --channels 3" in text
    summary = convert_dataset(
        ImageFolderSource(), str(src), str(tmp_path / "o2"), ConvertOptions(resize=8, channels=1), progress=False
    )
    shape_warnings = [w for w in summary.warnings if "no patient is known" not in w]  # a flat tree: said apart
    assert shape_warnings == [] and summary.notes["converted to 1 channel(s) (--channels)"] == 1
    dataset = load_dataset(tmp_path / "o2")
    grey = next(decode_png(s["png"]) for k, s in dataset["samples"].items() if k == "b_colour")
    assert grey.shape == (8, 8) and int(grey[0, 0]) == round(0.299 * 200 + 0.587 * 10 + 0.114 * 10)
    summary = convert_dataset(
        ImageFolderSource(), str(src), str(tmp_path / "o3"), ConvertOptions(resize=8, channels=3), progress=False
    )
    shape_warnings = [w for w in summary.warnings if "no patient is known" not in w]
    assert shape_warnings == [] and {r["channels"] for r in load_dataset(tmp_path / "o3")["index"]} == {3}
