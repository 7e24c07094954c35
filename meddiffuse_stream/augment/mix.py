"""Saliency-aware mixing: where the classifier's evidence is not, blend in a diffusion variant.

For an image x, its variant x̃ and saliency S in [0, 1] (defaults in :class:`MixConfig`, all configurable):

1. Evidence: the fewest top pixels holding ``mass`` (0.75) of the map's saliency above its median, above the
   ``quantile`` (0.7) of the map, optionally ``S >= peak * max(S)`` and at most ``max_area`` of the image (strict:
   ties and zeros are never evidence). The mass rule sizes the region to the map: a focused map (a small lesion)
   gives a small region, a spread one a larger one. A flat map (no pixel above another) means "evidence unknown":
   W is zero everywhere and the image is not mixed.
2. Protected region ``P = dilate(E, margin)``: W is exactly 0 on P, bit for bit. The margin (default 3 % of the
   image side) keeps the blend away from evidence the map drew a little too tight.
3. Per-image strength ``a = alpha_max * alpha_scale`` (1.0; with ``adaptive_alpha`` also times
   ``clamp(1 - mean(S), 0.25, 1)``: less when saliency is spread out).
4. ``W = Blur(a * (1 - S) * F * A, sigma)`` where ``A`` is everything farther than the blur kernel's radius from P,
   so the blurred weight is still exactly 0 on P (a sum of exact zeros), and ``F`` is an optional smooth random
   field in [field_floor, 1] that changes which parts of the background are replaced most from one draw to the next
   (off by default: ``field_floor`` 1; with it on, ``mask_draws`` gives each sample that many weights).
5. ``x_aug = (1 - W) * x + W * x̃``; wherever ``W == 0`` the pixel is the input's, bit for bit.

Ablations: a random rectangle of the same area instead of the evidence, a fixed ``a``, a hard mask (no blur).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "LEGACY_MIX",
    "MixConfig",
    "dilate",
    "evidence_iou",
    "evidence_mask",
    "evidence_of",
    "gaussian_blur",
    "mass_mask",
    "mix",
    "mix_weight",
    "per_image_quantile",
    "protected_region",
    "random_field",
    "random_mask",
    "top_fraction_iou",
    "top_k_mask",
]


@dataclass(frozen=True)
class MixConfig:
    """How MedDiffuseMix mixes and checks. ``sigma`` and ``margin`` of ``None`` are sized to the image.

    The defaults were chosen with ``tools/mix_sweep.py`` on the demo phantom's whole train split (seeds 0-2): the
    smallest protected region that keeps ≥ 97 % of lesion pixels on every seed — the top 60 % of the saliency mass,
    a 1 px margin at 64 px, and images the teacher is less than 70 % sure of left unmixed (where it is unsure, its
    map misses part of the lesion). docs/augmentation.md has the frontier and what the confidence gate costs.
    ``LEGACY_MIX`` holds the earlier defaults (a region of ~half the image, ~1 grey level of change)."""

    quantile: float = 0.7  # a floor: evidence is above this quantile of the map
    mass: float = 0.6  # evidence: the fewest top pixels holding this share of the saliency above the map's median
    peak: float = 0.0  # evidence also needs S >= peak * max(S): 0 turns the peak-relative threshold off
    max_area: float = 1.0  # the evidence covers at most this share of the image (its highest pixels)
    alpha_max: float = 1.0
    sigma: float | None = None  # None: 0.8 % of the image side (0.5 px at 64 px, 1.8 px at 224 px)
    margin: int | None = None  # None: 1.5 % of the image side (1 px at 64 px, 3 px at 224 px)
    adaptive_alpha: bool = False  # True: strength times clamp(1 - mean S, 0.25, 1)
    soft_mask: bool = True
    random_mask: bool = False
    field_floor: float = 1.0  # the random field's minimum; 1 turns it off (every draw the same weight)
    min_confidence: float = 0.7  # teacher p(label) below this: the evidence is unknown, the image is not mixed
    check: bool = True
    iou_top: float | None = None  # None: the check compares the evidence masks; a share: that top share of S
    min_iou: float = 0.3
    max_prob_drop: float = 0.1
    retries: int = 2

    def __post_init__(self) -> None:
        _check_types(self)
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if not 0 < self.mass <= 1:
            raise ValueError(f"mass must be in (0, 1] (1: no mass rule), got {self.mass}")
        if not 0 <= self.peak < 1:
            raise ValueError(f"peak must be in [0, 1), got {self.peak}")
        if not 0 < self.max_area <= 1:
            raise ValueError(f"max_area must be in (0, 1], got {self.max_area}")
        if not 0 < self.alpha_max <= 1:
            raise ValueError(f"alpha_max must be in (0, 1], got {self.alpha_max}")
        if self.sigma is not None and self.sigma <= 0:
            raise ValueError(f"sigma must be positive (or None: sized to the image), got {self.sigma}")
        if self.margin is not None and (
            isinstance(self.margin, bool) or int(self.margin) != self.margin or self.margin < 0
        ):
            raise ValueError(
                f"margin must be a whole number of pixels ≥ 0 (or None: sized to the image), got {self.margin}"
            )
        if not 0 <= self.field_floor <= 1:
            raise ValueError(f"field_floor must be in [0, 1], got {self.field_floor}")
        if not 0 <= self.min_confidence < 1:
            raise ValueError(f"min_confidence must be in [0, 1), got {self.min_confidence}")
        if self.iou_top is not None and not 0 < self.iou_top < 1:
            raise ValueError(f"iou_top must be in (0, 1), got {self.iou_top}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, got {self.retries}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "mix") -> MixConfig:
        """The YAML / CLI boundary: unknown names and wrong types are refused here, naming ``where``."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: expected a mapping of MixConfig settings, got {values!r}")
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{where}: unknown mix setting(s) {unknown}; known: {cls.field_names()}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from error

    def sigma_for(self, size: int) -> float:
        return self.sigma if self.sigma is not None else max(0.5, 0.008 * size)

    def margin_for(self, size: int) -> int:
        return int(self.margin) if self.margin is not None else max(1, round(0.015 * size))

    def max_step(self, size: int) -> float:
        """Bound on |W(p) - W(neighbour)| with the Gaussian: 2 * alpha_max / (sigma * sqrt(2 pi))."""
        return 2 * self.alpha_max / (self.sigma_for(size) * math.sqrt(2 * math.pi))


_KINDS = {"float": (float, int), "int": (int,), "bool": (bool,)}


def _check_types(config: MixConfig) -> None:
    """Each field holds its declared kind (a YAML ``"0.7"`` or ``yes`` for a number is refused, not compared)."""
    for spec in fields(config):
        value = getattr(config, spec.name)
        declared = str(spec.type)
        if value is None and "None" in declared:
            continue
        kind = next(name for name in ("bool", "float", "int") if declared.startswith(name))
        wrong_bool = isinstance(value, bool) and kind != "bool"
        if wrong_bool or not isinstance(value, _KINDS[kind]):
            raise ValueError(f"{spec.name} must be a {kind}, got {value!r}")


# the defaults before the protected region was sized to the evidence (2026-12-07; sigma and margin as they were at
# 64 px), for comparison runs (the ``meddiffusemix-legacy`` preset)
LEGACY_MIX = {
    "mass": 1.0,
    "alpha_max": 0.8,
    "sigma": 1.28,
    "margin": 3,
    "adaptive_alpha": True,
    "field_floor": 0.3,
    "iou_top": 0.2,
    "min_iou": 0.5,
    "min_confidence": 0.5,
}


def per_image_quantile(maps: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of each map (nearest rank, via ``kthvalue``: ~5x faster than ``torch.quantile``)."""
    flat = maps.flatten(1)
    rank = min(flat.shape[1], max(1, round(q * (flat.shape[1] - 1)) + 1))
    return flat.kthvalue(rank, dim=1).values.view(-1, 1, 1, 1)


def blur_radius(sigma: float, size: int) -> int:
    return max(1, min(math.ceil(3 * sigma), size - 1))


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` with reflected borders (kernel radius 3 sigma)."""
    radius = min(blur_radius(sigma, maps.shape[-1]), maps.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean dilation of ``(B, 1, H, W)`` by a square of side ``2 radius + 1``."""
    if radius <= 0:
        return mask.bool()
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0


def mass_mask(saliency: torch.Tensor, mass: float) -> torch.Tensor:
    """The fewest highest pixels of each map that hold ``mass`` of its saliency above the map's median (ties broken
    by position): a focused map gives a small set, a spread one a large set. Zeros and flat maps give none."""
    flat = saliency.flatten(1)
    excess = (flat - flat.median(dim=1, keepdim=True).values).clamp(min=0)
    total = excess.sum(dim=1, keepdim=True)
    ordered = torch.sort(excess, dim=1, descending=True, stable=True)
    before = (ordered.values.cumsum(dim=1) - ordered.values) / total.clamp(min=1e-12)
    chosen = (before < mass) & (ordered.values > 0)
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, ordered.indices, chosen)
    return mask.view_as(saliency)


def evidence_mask(
    saliency: torch.Tensor, quantile: float, peak: float = 0.0, max_area: float = 1.0, mass: float = 1.0
) -> torch.Tensor:
    """``S > quantile_q(S)``, ``S >= peak * max(S)`` and (``mass`` < 1) the mass rule, strictly: on a flat map (or the
    zeros of a sparse one) nothing is evidence; at most ``max_area`` of the image (the highest pixels)."""
    mask = saliency > per_image_quantile(saliency, quantile)
    if peak > 0:
        mask &= saliency >= peak * saliency.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    if mass < 1:
        mask &= mass_mask(saliency, mass)
    if max_area < 1:
        mask &= top_k_mask(saliency, max_area)
    return mask


def evidence_of(saliency: torch.Tensor, config: MixConfig) -> torch.Tensor:
    """:func:`evidence_mask` with ``config``'s rule."""
    return evidence_mask(saliency, config.quantile, config.peak, config.max_area, config.mass)


def is_flat(saliency: torch.Tensor) -> torch.Tensor:
    """``(B,)``: maps with no pixel above another, which locate no evidence at all."""
    flat = saliency.flatten(1)
    return flat.amax(dim=1) <= flat.amin(dim=1)


def random_mask(saliency: torch.Tensor, areas: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Ablation: per image a random rectangle covering ``areas[i]`` of it (the share its evidence mask covers)."""
    batch, _, height, width = saliency.shape
    mask = torch.zeros_like(saliency, dtype=torch.bool)
    for index in range(batch):
        area = float(areas[index])
        aspect = rng.uniform(0.5, 2.0)
        box_h = min(height, max(1, round(math.sqrt(area * height * width / aspect))))
        box_w = min(width, max(1, round(area * height * width / box_h)))
        top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
        mask[index, :, top : top + box_h, left : left + box_w] = True
    return mask


def random_field(count: int, height: int, width: int, floor: float, rng: np.random.Generator) -> torch.Tensor:
    """Smooth random fields in [floor, 1], ``(count, 1, H, W)``: low-frequency noise (a 4x4 grid, bicubic)."""
    grid = torch.as_tensor(rng.random((count, 1, 4, 4)), dtype=torch.float32)
    field = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return floor + (1 - floor) * field


def protected_region(saliency: torch.Tensor, config: MixConfig, rng: np.random.Generator | None = None):
    """``(B, 1, H, W)`` booleans: the evidence (or the ablation's random box) dilated by the margin."""
    if config.random_mask:
        if rng is None:
            raise ValueError("the random-mask ablation needs a generator")
        areas = evidence_of(saliency, config).flatten(1).float().mean(1)
        evidence = random_mask(saliency, areas.cpu(), rng).to(saliency.device)
    else:
        evidence = evidence_of(saliency, config)
    return dilate(evidence, config.margin_for(saliency.shape[-1]))


def mix_weight(
    saliency: torch.Tensor,
    config: MixConfig,
    alpha_scale: torch.Tensor,
    rng: np.random.Generator | None = None,
    field: torch.Tensor | None = None,
    protected: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mixing weight W ``(B, 1, H, W)`` in [0, alpha_max], exactly 0 on the protected region and on flat maps.

    ``alpha_scale`` (B,) attenuates per image; ``field`` (B, 1, H, W) in [0, 1] varies the weight over the
    background (see :func:`random_field`); ``protected`` overrides :func:`protected_region` (which needs ``rng``
    for the random-mask ablation).
    """
    size = saliency.shape[-1]
    if protected is None:
        protected = protected_region(saliency, config, rng)
    soft = config.soft_mask
    sigma = config.sigma_for(size)
    allowed = ~(dilate(protected, blur_radius(sigma, size)) if soft else protected)
    strength = torch.full((len(saliency),), config.alpha_max, device=saliency.device, dtype=saliency.dtype)
    if config.adaptive_alpha:
        strength = strength * (1 - saliency.flatten(1).mean(dim=1)).clamp(0.25, 1.0)
    strength = strength * alpha_scale.to(device=saliency.device, dtype=saliency.dtype)
    strength = torch.where(is_flat(saliency), torch.zeros_like(strength), strength)
    weight = strength.view(-1, 1, 1, 1) * (1 - saliency) * allowed
    if field is not None:
        weight = weight * field.to(weight)
    if soft:
        weight = gaussian_blur(weight, sigma)
    return weight.masked_fill_(protected, 0.0).clamp_(0.0, config.alpha_max)


def mix(images: torch.Tensor, variants: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(1 - W) x + W x̃``, with the input kept exactly wherever ``W == 0``."""
    blended = (1 - weight) * images + weight * variants
    return torch.where(weight > 0, blended, images)


def top_k_mask(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ``ceil(fraction * H * W)`` highest pixels of each map that are above zero (ties broken by position).

    A map that is all zeros has no top region; one with fewer positive pixels than k has only those: a flat or
    empty map can never "match" another by construction.
    """
    flat = maps.flatten(1)
    k = max(1, math.ceil(fraction * flat.shape[1]))
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return (chosen & (flat > 0)).view_as(maps)


def evidence_iou(first: torch.Tensor, second: torch.Tensor, config: MixConfig) -> torch.Tensor:
    """IoU per image of the two maps' evidence masks (the config's rule; 0 where either is empty): with a region
    sized to the evidence, a fixed top 20 % would mostly compare background."""
    a, b = evidence_of(first, config), evidence_of(second, config)
    intersection = (a & b).flatten(1).sum(dim=1).float()
    union = (a | b).flatten(1).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def top_fraction_iou(first: torch.Tensor, second: torch.Tensor, fraction: float) -> torch.Tensor:
    """IoU per image of the top-k regions of two saliency maps: did the evidence stay where it was? (0 where
    either map has no positive pixel.)"""
    a, b = top_k_mask(first, fraction), top_k_mask(second, fraction)
    intersection = (a & b).flatten(1).sum(dim=1).float()
    union = (a | b).flatten(1).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))
