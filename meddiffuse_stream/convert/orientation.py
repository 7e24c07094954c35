"""EXIF / XMP orientation: cameras and phones store the sensor's pixels and a tag saying how to turn them. Every
viewer turns them; a converter that does not stores the picture rotated or mirrored. The turn is applied to the
decoded array (any depth, grey or colour) and the tag's value recorded as ``orientation``."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["apply_orientation", "orientation_of"]

_ORIENTATION = 0x0112  # EXIF tag 274; Pillow's getexif() also reads XMP's tiff:Orientation into it


def orientation_of(image: Any) -> int:
    """The orientation (1..8) the image still needs, read after loading: 1 when none, or when Pillow's decoder
    already turned the pixels (TIFF) and dropped the tag; any other value counts as none."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels are still the pixels
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as a viewer shows them (EXIF 2.32, table for tag 274); rows and columns first, channels kept."""
    turned = {
        1: array,
        2: array[:, ::-1],  # mirrored left to right
        3: array[::-1, ::-1],  # rotated 180
        4: array[::-1],  # mirrored top to bottom
        5: array.swapaxes(0, 1),  # mirrored along the main diagonal
        6: np.rot90(array, -1),  # rotated 90 clockwise
        7: array[::-1, ::-1].swapaxes(0, 1),  # mirrored along the other diagonal
        8: np.rot90(array, 1),  # rotated 90 counter-clockwise
    }[orientation]
    return np.ascontiguousarray(turned)
