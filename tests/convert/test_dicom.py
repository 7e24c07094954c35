"""DICOM decoding on real files shipped by pydicom and pydicom-data."""

import io

import numpy as np
import pytest
from builders import small_dicom
from pydicom.data import get_testdata_file

from meddiffuse_stream.convert.base import RejectError
from meddiffuse_stream.convert.dicom import dicom_from_bytes


def _file(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as stream:
        return stream.read()


def _bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_monochrome1_cr_is_inverted_and_kept_at_16_bits():
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    raw = ds.pixel_array.astype(np.int64)
    loaded = dicom_from_bytes(_file("RG1_UNCR.dcm"), apply_window=False)
    assert loaded.image.dtype == np.uint16 and loaded.meta["photometric"] == "MONOCHROME1"
    expected = ((2**15 - 1) - raw) << 1  # 15 stored bits, inverted, shifted into the high bits
    assert np.array_equal(loaded.image.astype(np.int64), expected)
    assert loaded.meta["significant_bits"] == 15


def test_window_is_applied_and_monochrome1_stays_dark_for_air():
    loaded = dicom_from_bytes(_file("RG1_UNCR.dcm"))
    assert loaded.meta["window_applied"] and loaded.image.dtype == np.uint16
    # a chest radiograph shows more dark (air, lungs) at the border than bright: mean of the border is low
    border = np.concatenate([loaded.image[:50].ravel(), loaded.image[-50:].ravel()])
    assert border.mean() < loaded.image[800:1200, 800:1200].mean() * 2


def test_jpeg2000_lossless_decodes_to_the_same_pixels_as_uncompressed():
    compressed = dicom_from_bytes(_file("RG1_J2KR.dcm"))
    plain = dicom_from_bytes(_file("RG1_UNCR.dcm"))
    assert np.array_equal(compressed.image, plain.image)


def test_ct_signed_values_are_offset_losslessly():
    loaded = dicom_from_bytes(_file("CT_small.dcm"), apply_window=False)
    assert loaded.meta.get("pixel_offset") == 2**15 and loaded.image.dtype == np.uint16
    assert "rescale" in loaded.meta


def test_8_bit_monochrome2_stays_8_bit():
    loaded = dicom_from_bytes(_bytes(small_dicom("vlut_04.dcm", size=64)), apply_window=False)
    assert loaded.image.dtype == np.uint8 and loaded.image.shape == (64, 64)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("emri_small_jpeg_ls_lossless.dcm", "multi-frame"),
        ("emri_small.dcm", "multi-frame"),
    ],
)
def test_multi_frame_is_rejected(name, reason):
    with pytest.raises(RejectError, match=reason):
        dicom_from_bytes(_file(name))


def test_missing_codec_is_a_clear_reject():
    ds = small_dicom("JPGLosslessP14SV1_1s_1f_8b.dcm")
    with pytest.raises(RejectError, match="no codec installed for transfer syntax 'JPEG Lossless"):
        dicom_from_bytes(_bytes(ds))


def test_missing_pixel_data_and_non_dicom_are_rejected():
    ds = small_dicom("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(RejectError, match="without pixel data"):
        dicom_from_bytes(_bytes(ds))
    with pytest.raises(RejectError, match="not a DICOM file"):
        dicom_from_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(RejectError, match="zero-byte"):
        dicom_from_bytes(b"")


def test_colour_dicom_is_rgb_8_bit():
    loaded = dicom_from_bytes(_file("US1_UNCR.dcm"))
    assert loaded.image.shape == (480, 640, 3) and loaded.image.dtype == np.uint8
