"""Reading ordinary image files (PNG, JPEG, TIFF, BMP, GIF) into the arrays the shard format stores.

Depth is kept: 16-bit grey stays 16-bit, 16-bit colour PNG stays 16-bit and 16-bit grey+alpha PNG keeps its 16-bit
grey (decoded by libspng: Pillow would keep only the high byte), and a 16-bit colour TIFF, which Pillow cannot read
at full depth, is rejected with that reason. EXIF / XMP orientation is applied, as viewers do, and recorded
(:mod:`.orientation`). Multi-page files (TIFF stacks, APNG, GIF) follow ``--frames``. The pixel limit is checked
from each page's header before anything is decoded.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..geometry import GeometryMode, resize_hwc
from ..shardfmt.depth import DEEP_COLOUR_TIFF, decode_png_16, is_deep_colour_tiff, png_16_bit_kind
from .base import DEFAULT_MAX_PIXELS, DEFAULT_RULES, LoadedImage, ReadRules, RejectError
from .orientation import apply_orientation, orientation_of

__all__ = ["MAX_IMAGE_PIXELS", "image_from_bytes", "load_file_bytes", "resize_square", "to_channels"]

MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS  # kept for callers of the earlier name

_GREY_16 = ("I;16", "I;16B", "I;16L", "I;16N")


def image_from_bytes(data: bytes, max_pixels: int | None = None, *, rules: ReadRules = DEFAULT_RULES) -> LoadedImage:
    """Decode an image file's bytes: 16-bit grey and 16-bit colour PNG keep their depth, the rest is L or RGB."""
    limit = rules.max_pixels if max_pixels is None else max_pixels
    if not data:
        raise RejectError("zero-byte file")
    kind_16 = png_16_bit_kind(data)
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # opening reads headers only; every page's size is checked below, by our limit
        with Image.open(io.BytesIO(data)) as image:
            _check_size(*image.size, limit)
            before = orientation_of(image)
            loaded = _png_16_bit(data, kind_16) if kind_16 else _frames(image, limit, rules.frames)
            return _oriented(loaded, before, orientation_of(image) if not kind_16 else before)
    except RejectError:
        raise
    except Image.UnidentifiedImageError as error:
        raise RejectError("not an image file PIL can read") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # a known format, damaged inside
        raise RejectError(f"not a readable image ({type(error).__name__}: {error})") from error
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _check_size(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise RejectError(
            f"image of {width}x{height} pixels is over the limit of {limit} (--max-pixels): a possible "
            "decompression bomb"
        )


def _frames(image: Image.Image, limit: int, frames: str) -> LoadedImage:
    """The page(s) ``frames`` asks for; every page's size is checked before it is decoded."""
    count = int(getattr(image, "n_frames", 1) or 1)
    if count == 1 or image.format == "MPO":  # MPO: the first picture is the image, the rest are previews/depth
        _check_size(*image.size, limit)
        image.load()
        notes = ["multi-picture JPEG (MPO): first picture kept"] if count > 1 else []
        return LoadedImage(_to_array(image), meta={"source_mode": image.mode}, notes=notes)
    sizes = []
    for index in range(count):
        image.seek(index)
        sizes.append(image.size)
    kind = f"multi-page {image.format} ({count} pages)"
    if frames == "reject":
        raise RejectError(f"{kind}: --frames reject refuses multi-page files")
    if frames == "middle":
        if len(set(sizes)) > 1:
            raise RejectError(
                f"{kind} whose pages differ in size (a resolution pyramid or a mixed stack): export the page you "
                "want, or pass --frames all to keep every page"
            )
        middle = (count - 1) // 2
        _check_size(*sizes[middle], limit)
        image.seek(middle)
        image.load()
        meta = {"source_mode": image.mode, "frame_index": middle, "frames": count}
        return LoadedImage(_to_array(image), meta=meta, notes=[f"multi-page {image.format}: middle page kept"])
    total = sum(w * h for w, h in sizes)
    if total > limit:
        raise RejectError(
            f"{kind} of {total} pixels in all is over the limit of {limit} (--max-pixels); use --frames middle"
        )
    arrays = []
    for index in range(count):
        image.seek(index)
        image.load()
        arrays.append(_to_array(image))
    meta = {"source_mode": image.mode, "frames": count}
    return LoadedImage(arrays[0], meta=meta, frames=arrays, notes=[f"multi-page {image.format}: every page kept"])


def _png_16_bit(data: bytes, kind: str) -> LoadedImage:
    """A 16-bit colour or grey+alpha PNG, at 16 bits (the pixel limit was checked from its header)."""
    try:
        array = decode_png_16(data)
    except ImportError as error:
        raise RejectError(
            f"16-bit PNG ({kind}): Pillow would keep only 8 bits of it; install pyspng "
            "(pip install 'meddiffuse-stream[torch]') to keep all 16"
        ) from error
    except Exception as error:
        raise RejectError(f"not a readable image (16-bit PNG: {error})") from error
    notes = ["16-bit grey+alpha PNG: grey kept at 16 bits, alpha dropped"] if kind == "LA;16" else []
    return LoadedImage(array, meta={"source_mode": kind}, notes=notes)


def _oriented(loaded: LoadedImage, tagged: int, pending: int) -> LoadedImage:
    """``loaded`` turned as its EXIF / XMP orientation says. ``tagged`` is the tag read when the file was opened,
    ``pending`` the turn still to do once decoded (1 where the decoder did it already, as Pillow does for TIFF)."""
    orientation = pending if pending != 1 else tagged
    if orientation == 1:
        return loaded
    if pending != 1:
        loaded.image = apply_orientation(loaded.image, pending)
        if loaded.frames is not None:
            loaded.frames = [apply_orientation(frame, pending) for frame in loaded.frames]
    loaded.meta["orientation"] = orientation
    loaded.notes.append("EXIF / XMP orientation applied")
    return loaded


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
    if is_deep_colour_tiff(image):
        raise RejectError(DEEP_COLOUR_TIFF)
    if mode in ("L", "1", "LA", "La"):
        return np.asarray(image.convert("L"))
    if mode == "P":
        converted = image.convert("RGB")
        array = np.asarray(converted)
        grey = array[..., 0]
        return grey.copy() if (array == grey[..., None]).all() else array
    return np.asarray(image.convert("RGB"))


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Grey to RGB (the value repeated) or RGB to grey (ITU-R BT.601 luma, as Pillow's ``L``), dtype kept."""
    if channels == 3 and image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if channels == 1 and image.ndim == 3:
        weights = np.array([299, 587, 114], dtype=np.float64) / 1000
        luma = np.rint(image.astype(np.float64) @ weights)
        return np.clip(luma, 0, np.iinfo(image.dtype).max).astype(image.dtype)
    return image


def resize_square(image: np.ndarray, size: int, *, nearest: bool = False, mode: GeometryMode = "stretch") -> np.ndarray:
    """``size``×``size`` by ``mode`` (:mod:`meddiffuse_stream.geometry`: the loader's crop and letterbox, or
    stretch), with antialiasing (nearest for masks), keeping dtype and bit depth."""
    return resize_hwc(image, (size, size), mode, mask=nearest)


def load_file_bytes(
    data: bytes, name: str, *, apply_window: bool = True, rules: ReadRules = DEFAULT_RULES
) -> LoadedImage:
    """Pixels of an image or DICOM file, chosen by the DICOM magic or a ``.dcm`` suffix."""
    from .dicom import dicom_from_bytes, is_dicom

    if is_dicom(data) or name.lower().endswith((".dcm", ".dicom")):
        return dicom_from_bytes(data, apply_window=apply_window, frames=rules.frames, max_pixels=rules.max_pixels)
    return image_from_bytes(data, rules=rules)
