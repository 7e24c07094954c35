"""Images deeper than 8 bits that Pillow would cut short, and how to keep them: one answer for the converter and
the loader, so both decode a 16-bit image at 16 bits or refuse it with the same reason.

Pillow keeps 16-bit grey PNG and TIFF, but reads 16-bit colour PNG, 16-bit grey+alpha PNG and 16-bit colour TIFF
as 8 bits per channel. The PNGs are decoded by libspng instead (:func:`decode_png_16`); a 16-bit colour TIFF,
which neither reads at full depth, is refused (:func:`is_deep_colour_tiff`, :data:`DEEP_COLOUR_TIFF`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEEP_COLOUR_TIFF", "decode_png_16", "is_deep_colour_tiff", "png_16_bit_kind"]

DEEP_COLOUR_TIFF = (
    "16-bit colour TIFF: Pillow reads only 8 bits of each channel; save it as a 16-bit PNG to keep the depth, "
    "or as 8-bit if that is enough"
)
_GREY_16 = ("I;16", "I;16B", "I;16L", "I;16N")
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_KINDS_16 = {2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}


def png_16_bit_kind(data: bytes) -> str | None:
    """``"RGB;16"``, ``"RGBA;16"`` or ``"LA;16"`` for a 16-bit PNG that Pillow would cut to 8 bits (it keeps
    16-bit grey, but reads 16-bit colour and 16-bit grey+alpha as 8-bit RGB / RGBA); ``None`` otherwise."""
    if len(data) < 29 or data[:8] != _SIGNATURE or data[12:16] != b"IHDR" or data[24] != 16:
        return None
    return _KINDS_16.get(data[25])


def decode_png_16(data: bytes) -> np.ndarray:
    """A PNG :func:`png_16_bit_kind` names, at 16 bits: ``(H, W, 3)`` for colour, ``(H, W)`` grey for grey+alpha
    (alpha dropped, as for 8-bit grey+alpha). Decoded by libspng (pyspng), to RGBA16 whatever the colour type."""
    from pyspng import _pyspng_c as spng  # pyspng's load() has no 16-bit formats by name; its C call does

    rgba = spng.spng_decode_image_bytes(data, spng.SPNG_FMT_RGBA16)
    if png_16_bit_kind(data) == "LA;16":
        return np.ascontiguousarray(rgba[..., 0], dtype=np.uint16)
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint16)


def is_deep_colour_tiff(image: Any) -> bool:
    """An open Pillow image that is a TIFF of three or more channels with more than 8 bits each."""
    if image.format != "TIFF" or image.mode in _GREY_16:
        return False
    bits = getattr(image, "tag_v2", {}).get(258)  # BitsPerSample
    values = bits if isinstance(bits, tuple) else (bits,)
    return any(isinstance(v, int) and v > 8 for v in values) and len(values) >= 3
