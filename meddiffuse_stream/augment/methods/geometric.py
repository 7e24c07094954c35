"""Standard augmentation: flips, small rotations, brightness and contrast — drawn once, applied to image and ROI.

As MONAI's transforms do, all random numbers are drawn first (:func:`draw_standard`) and then applied, so the ROI
mask moves exactly as its image does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .context import Augmented, BatchInputs

__all__ = ["StandardDraw", "apply_standard", "draw_standard", "standard"]


@dataclass(frozen=True)
class StandardDraw:
    flips: np.ndarray  # (B,) bool
    angles: np.ndarray  # (B,) radians
    brightness: np.ndarray
    contrast: np.ndarray


def draw_standard(count: int, rng: np.random.Generator) -> StandardDraw:
    """Horizontal flips (p = 0.5), rotations within ±10°, brightness ±0.1 and contrast ×[0.9, 1.1]."""
    flips = rng.random(count) < 0.5
    angles = rng.uniform(-10, 10, count) * math.pi / 180
    return StandardDraw(flips, angles, rng.uniform(-0.1, 0.1, count), rng.uniform(0.9, 1.1, count))


def _warp(images: torch.Tensor, draw: StandardDraw, mode: str) -> torch.Tensor:
    flips = torch.as_tensor(draw.flips, device=images.device).view(-1, 1, 1, 1)
    images = torch.where(flips, images.flip(-1), images)
    angles = torch.as_tensor(draw.angles, device=images.device, dtype=images.dtype)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    padding = "border" if mode == "bilinear" else "zeros"
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding, align_corners=False)


def apply_standard(images: torch.Tensor, draw: StandardDraw, roi: torch.Tensor | None = None):
    """``(images, roi)`` transformed by ``draw``; the ROI by nearest neighbour, so it stays a mask."""
    images = _warp(images, draw, "bilinear")
    brightness = torch.as_tensor(draw.brightness, device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    contrast = torch.as_tensor(draw.contrast, device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast + mean + brightness).clamp(0, 1)
    moved = _warp(roi.to(images.dtype), draw, "nearest") if roi is not None else None
    return images, moved


def standard(inputs: BatchInputs) -> Augmented:
    images, roi = apply_standard(inputs.images, draw_standard(len(inputs.images), inputs.rng), inputs.roi)
    return Augmented(images, inputs.labels, torch.zeros_like(images[:, :1]), roi=roi)
