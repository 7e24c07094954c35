"""Uniform batches on request: resize (crop or letterbox) and channel count, in the workers, before batching.

Datasets in the wild mix sizes and grey/RGB images; a batch cannot. ``resize=`` scales each image so it covers the
target and cuts the centre (``"crop"``, nothing distorted, borders lost) or fits inside it and pads with zeros
(``"letterbox"``, nothing lost); ``channels=`` turns RGB into grey (ITU-R 601 luma, as PIL's ``L``) or repeats grey
three times. Deterministic: no random draw. ROI masks follow their image (nearest neighbour, so they stay binary).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from torchdata.nodes import BaseNode

from ..options import ConformOptions, ResizeMode
from .stages import _OneToOne

__all__ = ["Conform", "conform_sample", "convert_channels", "resize_image"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _scaled(plane: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(plane).resize((width, height), resample))


def resize_image(image: np.ndarray, size: tuple[int, int], mode: ResizeMode = "crop", mask: bool = False) -> np.ndarray:
    """``(C, H, W)`` uint8/uint16 to ``(C, *size)``; bilinear with antialiasing, or nearest for a ``mask``."""
    channels, height, width = image.shape
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return image
    scale = (max if mode == "crop" else min)(target_h / height, target_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resample = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
    planes = np.stack([_scaled(image[c], new_h, new_w, resample) for c in range(channels)]).astype(image.dtype)
    if mode == "crop":
        top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
        return np.ascontiguousarray(planes[:, top : top + target_h, left : left + target_w])
    out = np.zeros((channels, target_h, target_w), dtype=image.dtype)
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    out[:, top : top + new_h, left : left + new_w] = planes
    return out


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``(C, H, W)`` with C in {1, 3} to ``channels`` (1 or 3)."""
    have = image.shape[0]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=0)
    if have == 3 and channels == 1:
        grey = np.tensordot(_LUMA, image.astype(np.float32), axes=1)
        return np.rint(grey)[None].astype(image.dtype)
    raise ValueError(f"cannot turn a {have}-channel image into {channels} channels")


class Conform(_OneToOne):
    """Brings every sample to one size and/or channel count (numpy images, before user stages)."""

    def __init__(self, source: BaseNode[Any], options: ConformOptions) -> None:
        super().__init__(source)
        self.options = options

    def apply(self, sample: dict[str, Any]) -> dict[str, Any]:
        return conform_sample(sample, self.options)


def conform_sample(sample: dict[str, Any], options: ConformOptions) -> dict[str, Any]:
    """A decoded sample (numpy image) at the options' size and channels (None: as it is); its ROI follows."""
    size, mode, channels = options.size, options.mode, options.channels
    image = sample["image"]
    if not isinstance(image, np.ndarray):
        raise TypeError("Conform works on decoded numpy images: place it before stages that make tensors")
    if channels is not None:
        image = convert_channels(image, channels)
    if size is not None:
        image = resize_image(image, size, mode)
        for name in ("roi", "rois"):
            if name in sample:
                sample = dict(sample, **{name: resize_image(sample[name], size, mode, mask=True)})
    return dict(sample, image=image)
