"""Saliency-aware mixing: where the classifier's evidence is not, blend in a diffusion variant.

For an image x, its variant x̃ and saliency S in [0, 1] (defaults in :class:`MixConfig`, all configurable):

1. High-saliency mask ``M_hi = S > quantile_q(S)`` per image (q = 0.7); ``M_lo = 1 - M_hi``.
2. Per-image strength ``a = alpha_max * clamp(1 - mean(S), 0.25, 1)``: smaller when saliency is spread out,
   since then less of the image is safely away from the evidence.
3. Per-pixel weight ``alpha(p) = a * (1 - S(p))`` on ``M_lo``; ``W = GaussianBlur(alpha * M_lo, sigma)``.
4. ``x_aug = (1 - W) * x + W * x̃``; wherever ``W == 0`` the pixel is the input's, bit for bit.

Ablations: a random mask of the same area instead of the saliency mask, a fixed ``a``, a hard mask (no blur).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MixConfig", "gaussian_blur", "mix", "mix_weight", "per_image_quantile", "random_mask", "top_fraction_iou"]


@dataclass(frozen=True)
class MixConfig:
    quantile: float = 0.7
    alpha_max: float = 0.8
    sigma: float = 3.0
    adaptive_alpha: bool = True
    soft_mask: bool = True
    random_mask: bool = False
    check: bool = True
    iou_top: float = 0.2  # the top 20 % of saliency is "the evidence" for the preservation check
    min_iou: float = 0.5
    max_prob_drop: float = 0.1
    retries: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if not 0 < self.alpha_max <= 1:
            raise ValueError(f"alpha_max must be in (0, 1], got {self.alpha_max}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")

    @property
    def max_step(self) -> float:
        """Bound on |W(p) - W(neighbour)| with the Gaussian: 2 * alpha_max / (sigma * sqrt(2 pi))."""
        return 2 * self.alpha_max / (self.sigma * math.sqrt(2 * math.pi))


def per_image_quantile(maps: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of each map (nearest rank, via ``kthvalue``: ~5x faster than ``torch.quantile``)."""
    flat = maps.flatten(1)
    rank = min(flat.shape[1], max(1, round(q * (flat.shape[1] - 1)) + 1))
    return flat.kthvalue(rank, dim=1).values.view(-1, 1, 1, 1)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` with reflected borders (kernel radius 3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))


def random_mask(saliency: torch.Tensor, quantile: float, rng: np.random.Generator) -> torch.Tensor:
    """Ablation: a random rectangle covering the same area fraction as the high-saliency mask would."""
    batch, _, height, width = saliency.shape
    mask = torch.zeros_like(saliency)
    area = 1 - quantile
    for index in range(batch):
        aspect = rng.uniform(0.5, 2.0)
        box_h = min(height, max(1, round(math.sqrt(area * height * width / aspect))))
        box_w = min(width, max(1, round(area * height * width / box_h)))
        top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
        mask[index, :, top : top + box_h, left : left + box_w] = 1
    return mask


def mix_weight(
    saliency: torch.Tensor, config: MixConfig, alpha_scale: torch.Tensor, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """The mixing weight W ``(B, 1, H, W)`` in [0, alpha_max]; ``alpha_scale`` (B,) attenuates per image."""
    if config.random_mask:
        if rng is None:
            raise ValueError("the random-mask ablation needs a generator")
        high = random_mask(saliency, config.quantile, rng)
    else:
        threshold = per_image_quantile(saliency, config.quantile)
        high = (saliency > threshold).to(saliency.dtype)  # strict: a flat zero background is never "evidence"
    low = 1 - high
    strength = torch.full((len(saliency),), config.alpha_max, device=saliency.device, dtype=saliency.dtype)
    if config.adaptive_alpha:
        strength = strength * (1 - saliency.flatten(1).mean(dim=1)).clamp(0.25, 1.0)
    strength = strength * alpha_scale.to(saliency.dtype)
    weight = strength.view(-1, 1, 1, 1) * (1 - saliency) * low
    if config.soft_mask:
        weight = gaussian_blur(weight, config.sigma)
    return weight.clamp_(0.0, config.alpha_max)


def mix(images: torch.Tensor, variants: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(1 - W) x + W x̃``, with the input kept exactly wherever ``W == 0``."""
    blended = (1 - weight) * images + weight * variants
    return torch.where(weight > 0, blended, images)


def top_fraction_iou(first: torch.Tensor, second: torch.Tensor, fraction: float) -> torch.Tensor:
    """IoU per image of the top ``fraction`` of two saliency maps: did the evidence stay where it was?"""

    def top(maps: torch.Tensor) -> torch.Tensor:
        return maps >= per_image_quantile(maps, 1 - fraction)

    a, b = top(first), top(second)
    intersection = (a & b).flatten(1).sum(dim=1).float()
    union = (a | b).flatten(1).sum(dim=1).float().clamp(min=1)
    return intersection / union
