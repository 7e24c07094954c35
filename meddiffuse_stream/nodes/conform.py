"""Uniform batches on request: resize (crop or letterbox) and channel count, in the workers, before batching.

Datasets in the wild mix sizes and grey/RGB images; a batch cannot. ``resize=`` scales each image so it covers the
target and cuts the centre (``"crop"``, nothing distorted, borders lost) or fits inside it and pads with zeros
(``"letterbox"``, nothing lost); ``channels=`` turns RGB into grey (ITU-R 601 luma, as PIL's ``L``) or repeats grey
three times. Deterministic: no random draw. ROI masks follow their image (nearest neighbour, so they stay binary).
The geometry is :mod:`meddiffuse_stream.geometry`'s, which the converter's ``--resize-mode`` uses too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from ..geometry import resize_planes as resize_image
from ..options import ConformOptions
from .stages import _OneToOne

__all__ = ["Conform", "conform_sample", "convert_channels", "resize_image"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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
