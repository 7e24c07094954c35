"""Bringing an image to a target size — one implementation for the loader (``resize=``, ``resize_mode=``) and the
converter (``shard --resize N --resize-mode``), so a dataset resized when it is sharded looks like one resized as
it is read.

``"crop"`` scales the image to cover the target and cuts the centre (nothing distorted, borders lost);
``"letterbox"`` scales it to fit inside and pads with zeros (nothing lost, nothing distorted); ``"stretch"`` scales
each side to the target on its own (nothing lost, the anatomy distorted when the aspect ratio changes). Images are
resampled bilinearly with antialiasing, masks by nearest neighbour (they stay binary, and follow their image
through the same crop or padding). 8-bit planes go through Pillow as they are; 16-bit ones through 32-bit float
(Pillow has no 16-bit colour, and its 16-bit integer path rounds), dtype and depth kept.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from PIL import Image

__all__ = ["GEOMETRY_MODES", "GeometryMode", "resize_hwc", "resize_planes"]

GeometryMode = Literal["crop", "letterbox", "stretch"]
GEOMETRY_MODES: tuple[GeometryMode, ...] = get_args(GeometryMode)


def _scaled(plane: np.ndarray, height: int, width: int, mask: bool) -> np.ndarray:
    """One ``(H, W)`` uint8/uint16 plane at ``height`` × ``width``, dtype kept."""
    resample = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
    if plane.dtype == np.uint16:
        resized = Image.fromarray(plane.astype(np.float32)).resize((width, height), resample)
        return np.clip(np.rint(np.asarray(resized)), 0, 65535).astype(np.uint16)
    return np.asarray(Image.fromarray(plane).resize((width, height), resample)).astype(plane.dtype, copy=False)


def resize_planes(
    image: np.ndarray, size: tuple[int, int], mode: GeometryMode = "crop", *, mask: bool = False
) -> np.ndarray:
    """``(C, H, W)`` uint8/uint16 to ``(C, *size)`` (``size`` is ``(height, width)``); unchanged when it has it."""
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"resize mode must be one of {GEOMETRY_MODES}, got {mode!r}")
    channels, height, width = image.shape
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return image
    if mode == "stretch":
        new_h, new_w = target_h, target_w
    else:
        scale = (max if mode == "crop" else min)(target_h / height, target_w / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    planes = np.stack([_scaled(image[c], new_h, new_w, mask) for c in range(channels)])
    if mode == "stretch":
        return planes
    if mode == "crop":
        top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
        return np.ascontiguousarray(planes[:, top : top + target_h, left : left + target_w])
    out = np.zeros((channels, target_h, target_w), dtype=image.dtype)
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    out[:, top : top + new_h, left : left + new_w] = planes
    return out


def resize_hwc(
    image: np.ndarray, size: tuple[int, int], mode: GeometryMode = "crop", *, mask: bool = False
) -> np.ndarray:
    """:func:`resize_planes` for ``(H, W)`` and ``(H, W, C)`` arrays (the converter's layout), layout kept."""
    if image.ndim == 2:
        return resize_planes(image[None], size, mode, mask=mask)[0]
    resized = resize_planes(np.moveaxis(image, 2, 0), size, mode, mask=mask)
    return np.ascontiguousarray(np.moveaxis(resized, 0, 2))
