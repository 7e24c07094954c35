"""Reading ordinary image files (PNG, JPEG, TIFF, BMP) into the arrays the shard format stores."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from .base import LoadedImage, RejectError

__all__ = ["MAX_IMAGE_PIXELS", "image_from_bytes", "load_file_bytes", "resize_square"]

MAX_IMAGE_PIXELS = 100_000_000  # above this an input is rejected as a possible decompression bomb

_GREY_16 = ("I;16", "I;16B", "I;16L", "I;16N")


def image_from_bytes(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> LoadedImage:
    """Decode an image file's bytes; keeps 16-bit grey as uint16 and reduces everything else to L or RGB."""
    if not data:
        raise RejectError("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise RejectError(f"image of {width}x{height} pixels is over the limit of {max_pixels}")
                image.load()
                return LoadedImage(_to_array(image), meta={"source_mode": image.mode})
    except RejectError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise RejectError(f"decompression bomb: {error}") from error
    except Image.UnidentifiedImageError as error:
        raise RejectError("not an image file PIL can read") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # a known format, damaged inside
        raise RejectError(f"not a readable image ({type(error).__name__}: {error})") from error


def _to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _GREY_16:
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise RejectError(f"32-bit integer image with values {values.min()}..{values.max()} outside 16 bits")
        return values.astype(np.uint16)
    if mode == "F":
        raise RejectError("floating-point image: convert it to 8 or 16 bit first (no silent rescaling)")
    if mode in ("L", "1"):
        return np.asarray(image.convert("L"))
    if mode in ("LA", "La"):
        return np.asarray(image.convert("L"))
    if mode == "P":
        converted = image.convert("RGB")
        array = np.asarray(converted)
        grey = array[..., 0]
        return grey.copy() if (array == grey[..., None]).all() else array
    return np.asarray(image.convert("RGB"))


def resize_square(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize to ``size``×``size`` with antialiasing (nearest for masks), keeping dtype and bit depth."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if image.dtype == np.uint16:
        resized = Image.fromarray(image.astype(np.float32)).resize((size, size), resample)
        return np.clip(np.rint(np.asarray(resized)), 0, 65535).astype(np.uint16)
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def load_file_bytes(data: bytes, name: str, *, apply_window: bool = True) -> LoadedImage:
    """Pixels of an image or DICOM file, chosen by the DICOM magic or a ``.dcm`` suffix."""
    from .dicom import dicom_from_bytes, is_dicom

    if is_dicom(data) or name.lower().endswith((".dcm", ".dicom")):
        return dicom_from_bytes(data, apply_window=apply_window)
    return image_from_bytes(data)
