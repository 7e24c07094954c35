"""DICOM decoding on real files shipped by pydicom and pydicom-data, read as a PACS viewer shows them."""

import io
import tracemalloc
import zlib

import numpy as np
import pydicom
import pytest
from builders import small_dicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from meddiffuse_stream.convert.base import RejectError
from meddiffuse_stream.convert.dicom import dicom_from_bytes, window_unit


def _file(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as stream:
        return stream.read()


def _bytes(ds, **options) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, **options)
    return buffer.getvalue()


def _reference(name: str) -> np.ndarray:
    return pydicom.dcmread(get_testdata_file(name)).pixel_array


def test_monochrome1_cr_is_inverted_and_kept_at_16_bits():
    raw = _reference("RG1_UNCR.dcm").astype(np.int64)
    loaded = dicom_from_bytes(_file("RG1_UNCR.dcm"), apply_window=False)
    assert loaded.image.dtype == np.uint16 and loaded.meta["photometric"] == "MONOCHROME1"
    expected = ((2**15 - 1) - raw) << 1  # 15 stored bits, inverted, shifted into the high bits
    assert np.array_equal(loaded.image.astype(np.int64), expected)
    assert loaded.meta["significant_bits"] == 15


def test_window_is_applied_and_monochrome1_stays_dark_for_air():
    loaded = dicom_from_bytes(_file("RG1_UNCR.dcm"))
    assert loaded.meta["window_applied"] and loaded.image.dtype == np.uint16
    border = np.concatenate([loaded.image[:50].ravel(), loaded.image[-50:].ravel()])
    assert border.mean() < loaded.image[800:1200, 800:1200].mean() * 2


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "MR_small.dcm", "MR2_UNCR.dcm"])
def test_window_follows_the_modality_lut_as_pydicom_computes_it(name):
    """CT windows are in Hounsfield units: the rescale comes first (693_UNCR: intercept -1024, window 40/100)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    low, high = low * slope + intercept, high * slope + intercept  # pydicom's output range for a rescaled window
    expected = np.rint((values - low) / (high - low) * 65535)
    loaded = dicom_from_bytes(_file(name))
    assert loaded.meta["window_applied"]
    assert np.abs(loaded.image.astype(np.float64) - expected).max() <= 1


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(function):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.VOILUTFunction = function
    values = ds.pixel_array.astype(np.float64)
    expected = apply_voi_lut(values, ds)  # output range -32768..32767 for this signed 16-bit image
    unit = window_unit(values, float(ds.WindowCenter), float(ds.WindowWidth), function)
    assert np.allclose(unit, (expected + 32768) / 65535, atol=1e-9)


@pytest.mark.parametrize("centre_width", [(0, 0), (0, 0.5), ("", ""), (100, -5)])
def test_a_window_a_viewer_ignores_is_ignored_counted_and_the_stored_range_kept(centre_width):
    centre, width = centre_width
    ds = small_dicom("MR_small.dcm", WindowCenter=centre, WindowWidth=width)
    loaded = dicom_from_bytes(_bytes(ds))
    plain = dicom_from_bytes(_file("MR_small.dcm"), apply_window=False)
    assert not loaded.meta["window_applied"] and "window_ignored" in loaded.meta
    assert np.array_equal(loaded.image, plain.image)
    assert any("window ignored" in note for note in loaded.notes)


def test_zero_window_mr_in_every_transfer_syntax_converts():
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR2_J2KR.dcm",
    ):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.WindowCenter, ds.WindowWidth = 0, 0
        loaded = dicom_from_bytes(_bytes(ds))
        assert loaded.meta["window_ignored"].startswith("width 0"), name


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # JPEG 2000 lossless
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS (pyjpegls / gdcm)
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),  # JPEG Lossless process 14, colour (gdcm)
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
    ],
)
def test_lossless_syntaxes_decode_to_the_uncompressed_pixels(compressed, reference):
    assert np.array_equal(dicom_from_bytes(_file(compressed)).image, dicom_from_bytes(_file(reference)).image)


def test_jpeg_lossless_process_14_grey_decodes():
    loaded = dicom_from_bytes(_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert loaded.image.shape == (768, 1024) and loaded.image.dtype == np.uint8 and loaded.image.std() > 0


def test_12_bit_jpeg_extended_is_a_reject_naming_the_codec_and_its_licence():
    with pytest.raises(RejectError, match=r"12-bit JPEG needs pylibjpeg-libjpeg, which is GPL-3\.0"):
        dicom_from_bytes(_file("JPGExtended.dcm"))


def test_missing_codec_is_a_clear_reject(monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(RejectError, match="no codec installed for transfer syntax 'JPEG-LS Lossless"):
        dicom_from_bytes(_file("MR_small_jpeg_ls_lossless.dcm"))


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_rgb_dcmtk_ebcyn1_dcmd.dcm"),  # JPEG baseline YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+n2.dcm", "SC_rgb_dcmtk_ebcyn2_dcmd.dcm"),
        ("SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_dcmtk_ebcys4_dcmd.dcm"),
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_dcmtk_ebcynp_dcmd.dcm"),  # JPEG baseline YBR_FULL_422
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_dcmtk_ebcys2_dcmd.dcm"),
        ("SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_dcmtk_ebcr_dcmd.dcm"),  # JPEG baseline RGB
        ("US1_J2KR.dcm", "US1_UNCR.dcm"),  # JPEG 2000 YBR_RCT
        ("SC_rgb_jpeg.dcm", "SC_rgb_jpeg_dcmd.dcm"),
    ],
)
def test_colour_is_decoded_once_and_matches_the_rgb_reference(name, reference):
    loaded = dicom_from_bytes(_file(name))
    expected = _reference(reference)
    assert loaded.image.dtype == np.uint8 and loaded.image.shape == expected.shape
    assert np.array_equal(loaded.image, expected)


@pytest.mark.parametrize(
    "name", ["SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
)
def test_ybr_colour_matches_the_original_rgb_within_conversion_rounding(name):
    loaded = dicom_from_bytes(_file(name)).image.astype(np.int64)
    original = _reference("SC_rgb.dcm").astype(np.int64)
    assert np.abs(loaded - original).mean() < 1.0 and np.abs(loaded - original).max() <= 8
    assert np.abs(loaded[0, 0] - [255, 0, 0]).max() <= 8  # pure red stays red (converted twice it was 75,255,27)


def test_palette_colour_is_the_same_in_every_encoding_and_kept_at_8_bits_when_exact():
    little = dicom_from_bytes(_file("OBXXXX1A.dcm"))
    assert little.image.shape == (600, 800, 3) and little.image.dtype == np.uint8 and little.meta["palette_applied"]
    for other in ("OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"):  # big endian: pydicom 3.0 alone swaps the colours
        assert np.array_equal(dicom_from_bytes(_file(other)).image, little.image), other
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    from pydicom.pixels import apply_color_lut

    assert np.array_equal(little.image, (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8))
    assert np.array_equal(
        dicom_from_bytes(_file("gdcm-US-ALOKA-16.dcm")).image, dicom_from_bytes(_file("gdcm-US-ALOKA-16_big.dcm")).image
    )


def test_16_bit_colour_is_kept_at_16_bits_and_32_bit_is_refused():
    loaded = dicom_from_bytes(_file("SC_rgb_16bit.dcm"))
    assert loaded.image.dtype == np.uint16 and loaded.image.shape == (100, 100, 3)
    assert np.array_equal(loaded.image, _reference("SC_rgb_16bit.dcm"))  # 16 stored bits: bit-exact
    assert np.array_equal(dicom_from_bytes(_file("SC_rgb_rle_16bit.dcm")).image, loaded.image)
    with pytest.raises(RejectError, match="32-bit colour DICOM"):
        dicom_from_bytes(_file("SC_rgb_32bit.dcm"))


def test_frames_middle_all_and_reject():
    frames = _reference("emri_small.dcm")
    middle = dicom_from_bytes(_file("emri_small.dcm"), apply_window=False)
    assert middle.meta["frame_index"] == 4 and middle.meta["frames"] == 10 and middle.frames is None
    assert np.array_equal(middle.image, dicom_from_bytes(_file("emri_small.dcm"), frames="all").frames[4])
    every = dicom_from_bytes(_file("emri_small_jpeg_ls_lossless.dcm"), frames="all")
    assert len(every.frames) == 10 and len({f.tobytes() for f in every.frames}) == 10
    assert np.array_equal(middle.image.astype(np.int64), frames[4].astype(np.int64) << 4)  # 12 stored bits
    with pytest.raises(RejectError, match="--frames reject"):
        dicom_from_bytes(_file("emri_small.dcm"), frames="reject")
    colour = dicom_from_bytes(_file("examples_ybr_color.dcm"))  # a JPEG baseline YBR_FULL_422 cine of 30 frames
    assert colour.image.shape == (240, 320, 3) and colour.meta["frame_index"] == 14


def test_all_frames_count_against_the_pixel_limit():
    with pytest.raises(RejectError, match="use --frames middle"):
        dicom_from_bytes(_file("emri_small.dcm"), frames="all", max_pixels=64 * 64 * 5)
    assert dicom_from_bytes(_file("emri_small.dcm"), frames="middle", max_pixels=64 * 64).image.shape == (64, 64)


def _meta_end(data: bytes) -> int:
    return 144 + int.from_bytes(data[140:144], "little")  # (0002,0000) group length follows the DICM magic


def _deflated_bomb(side: int, chunk: int = 1 << 24) -> bytes:
    """A real MR header declaring side x side 16-bit pixels, all zero, deflated: tiny on disk, huge inflated."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows = ds.Columns = side
    del ds.PixelData
    plain = _bytes(ds, implicit_vr=False, little_endian=True)
    header = plain[_meta_end(plain) :]  # the explicit VR little endian data set, up to where PixelData goes
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    deflated = _bytes(ds, implicit_vr=False, little_endian=True)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + (side * side * 2).to_bytes(4, "little")
    parts = [compressor.compress(header + pixel_header)]
    zeros, remaining = bytes(chunk), side * side * 2
    while remaining:
        parts.append(compressor.compress(zeros[: min(chunk, remaining)]))
        remaining -= min(chunk, remaining)
    parts.append(compressor.flush())
    return deflated[: _meta_end(deflated)] + b"".join(parts)


def test_pixel_limit_is_read_from_the_header_of_a_deflated_file_before_anything_is_inflated():
    bomb = _deflated_bomb(15000)  # the file: 15000 x 15000 16-bit, ~440 KB deflated, 450 MB inflated
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(RejectError, match="15000x15000 pixels is over the limit of 100000000"):
            dicom_from_bytes(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB allocated: the 450 MB of pixels were inflated"


def test_deflated_file_that_inflates_beyond_its_header_is_refused():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.add_new(0x00091010, "OB", bytes(40 << 20))  # 40 MiB of zeros in a private tag: a hidden bomb
    data = _bytes(ds, implicit_vr=False, little_endian=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    with pytest.raises(RejectError, match="inflates to more than"):
        dicom_from_bytes(_bytes(ds, implicit_vr=False, little_endian=True))
    assert dicom_from_bytes(data).image.shape == (64, 64)


def test_real_deflated_file_converts():
    loaded = dicom_from_bytes(_file("image_dfl.dcm"))
    assert loaded.image.shape == (512, 512) and loaded.image.std() > 0


def test_pixel_limit_applies_before_decoding_compressed_data(monkeypatch):
    import pydicom.pixels.decoders.base as decoders

    monkeypatch.setattr(decoders.Decoder, "as_array", lambda *a, **k: pytest.fail("decoded before the size check"))
    with pytest.raises(RejectError, match="over the limit of 1000000"):
        dicom_from_bytes(_file("RG1_J2KR.dcm"), max_pixels=1_000_000)


def test_headerless_files_from_old_modalities_are_read():
    loaded = dicom_from_bytes(_file("OT-PAL-8-face.dcm"))  # a real file without the 128-byte preamble
    assert loaded.image.shape == (480, 640, 3)
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, pydicom.dcmread(get_testdata_file("MR_small.dcm")))  # the data set alone, as ACR-NEMA
    headerless = buffer.getvalue()
    assert headerless[128:132] != b"DICM"
    assert np.array_equal(dicom_from_bytes(headerless).image, dicom_from_bytes(_file("MR_small.dcm")).image)


def test_ct_signed_values_are_offset_losslessly():
    loaded = dicom_from_bytes(_file("CT_small.dcm"), apply_window=False)
    assert loaded.meta.get("pixel_offset") == 2**15 and loaded.image.dtype == np.uint16
    assert "rescale" in loaded.meta


def test_8_bit_monochrome2_stays_8_bit():
    loaded = dicom_from_bytes(_bytes(small_dicom("vlut_04.dcm", size=64)), apply_window=False)
    assert loaded.image.dtype == np.uint8 and loaded.image.shape == (64, 64)


def test_missing_pixel_data_and_non_dicom_are_rejected():
    ds = small_dicom("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(RejectError, match="without pixel data"):
        dicom_from_bytes(_bytes(ds))
    with pytest.raises(RejectError, match="not a DICOM file"):
        dicom_from_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(RejectError, match="not a DICOM file"):
        dicom_from_bytes(b"just text, named .dcm")
    with pytest.raises(RejectError, match="zero-byte"):
        dicom_from_bytes(b"")
