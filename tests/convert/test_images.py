import io

import numpy as np
import pytest
from PIL import Image

from meddiffuse_stream.convert.base import RejectError
from meddiffuse_stream.convert.images import image_from_bytes, resize_square


def _bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_16_bit_png_is_kept_bit_exactly():
    array = np.random.default_rng(0).integers(0, 65536, (20, 30), dtype=np.uint16)
    loaded = image_from_bytes(_bytes(Image.fromarray(array)))
    assert loaded.image.dtype == np.uint16 and np.array_equal(loaded.image, array)


def test_16_bit_tiff_is_kept_bit_exactly():
    array = np.random.default_rng(1).integers(0, 65536, (12, 10), dtype=np.uint16)
    loaded = image_from_bytes(_bytes(Image.fromarray(array), "TIFF"))
    assert np.array_equal(loaded.image, array)


def test_grey_palette_becomes_grey_and_colour_palette_rgb():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    assert image_from_bytes(_bytes(grey)).image.ndim == 2
    colour = Image.fromarray(np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P")
    assert image_from_bytes(_bytes(colour)).image.shape == (8, 8, 3)


def test_rgba_drops_alpha_and_jpeg_decodes():
    rgba = Image.new("RGBA", (6, 5), (10, 20, 30, 40))
    assert image_from_bytes(_bytes(rgba)).image.shape == (5, 6, 3)
    assert image_from_bytes(_bytes(Image.new("RGB", (9, 9), "red"), "JPEG")).image.shape == (9, 9, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero-byte"),
        (b"this is a text file", "not an image"),
        (_bytes(Image.new("L", (64, 64)))[:60], "truncated|broken|not an image|cannot"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises((RejectError, OSError), match=reason):
        image_from_bytes(data)


def test_decompression_bomb_is_rejected_before_decoding():
    with pytest.raises(RejectError, match="over the limit"):
        image_from_bytes(_bytes(Image.new("L", (300, 300))), max_pixels=10_000)


def test_float_images_are_refused_not_rescaled():
    with pytest.raises(RejectError, match="floating-point"):
        image_from_bytes(_bytes(Image.fromarray(np.ones((4, 4), np.float32)), "TIFF"))


def test_resize_keeps_dtype_and_masks_stay_binary():
    wide = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    small = resize_square(wide, 16)
    assert small.shape == (16, 16) and small.dtype == np.uint16 and small.max() > 60000
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 10:20] = 1
    assert set(np.unique(resize_square(mask, 16, nearest=True))) <= {0, 1}
