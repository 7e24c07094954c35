"""Diffusion baselines: DiffuseMix, GenMix, DA-Fusion — label-preserving, using the sample's cached variant.

None of them looks at saliency: where the variant differs from the image, it differs everywhere, evidence
included. That is the gap MedDiffuseMix closes, and what the evidence metrics measure.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .context import Augmented, BatchInputs

__all__ = ["dafusion", "diffusemix", "fractal", "genmix", "hybrid"]


def hybrid(images: torch.Tensor, rng: np.random.Generator, ramp: int = 20) -> torch.Tensor:
    """The share of the variant in DiffuseMix's hybrid: one half of each image, a linear ramp of ``ramp`` px."""
    batch, _, height, width = images.shape
    weight = torch.zeros_like(images[:, :1])
    for index in range(batch):
        vertical = rng.random() < 0.5
        size = width if vertical else height
        span = max(1, min(ramp, size // 2))
        position = torch.arange(size, device=images.device, dtype=images.dtype)
        profile = ((position - (size - span) / 2) / span).clamp(0, 1)
        if rng.random() < 0.5:
            profile = 1 - profile
        weight[index, 0] = profile.view(1, -1) if vertical else profile.view(-1, 1)
    return weight


def fractal(rng: np.random.Generator, count: int, height: int, width: int, octaves: int = 5) -> torch.Tensor:
    """Procedural fractal (fractional Brownian) images in [0, 1], ``(count, 1, height, width)``."""
    total = torch.zeros(count, 1, height, width)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        cells = 2 ** (octave + 2)
        grid = torch.as_tensor(rng.random((count, 1, cells, cells)), dtype=torch.float32)
        total += amplitude * F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        norm += amplitude
        amplitude /= 2
    flat = total.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return (total - low) / (high - low).clamp(min=1e-6)


def _variants(inputs: BatchInputs) -> torch.Tensor:
    assert inputs.variants is not None, "this method needs diffusion variants"
    return inputs.variants(None)


def diffusemix(inputs: BatchInputs, blend: float = 0.2) -> Augmented:
    """Half image, half variant (20 px ramp), then a fractal blended in at ``blend``; the label is kept."""
    images, variants = inputs.images, _variants(inputs)
    share = hybrid(images, inputs.rng)
    mixed = (1 - share) * images + share * variants
    fractals = fractal(inputs.rng, len(images), *images.shape[-2:]).to(images)
    mixed = (1 - blend) * mixed + blend * fractals
    weight = (share * (1 - blend) + blend).clamp(0, 1)
    return Augmented(mixed, inputs.labels, weight, details={"variant": variants})


def genmix(inputs: BatchInputs, max_distance: float = 0.15) -> Augmented:
    """The hybrid, but a variant whose mean absolute difference from its image exceeds ``max_distance`` is
    dropped (that image is kept as it is): generated content too far from the original is not trusted."""
    images, variants = inputs.images, _variants(inputs)
    distance = (images - variants).abs().flatten(1).mean(dim=1)
    trusted = (distance <= max_distance).to(images.dtype).view(-1, 1, 1, 1)
    share = hybrid(images, inputs.rng) * trusted
    return Augmented((1 - share) * images + share * variants, inputs.labels, share, details={"variant": variants})


def dafusion(inputs: BatchInputs) -> Augmented:
    """The image is replaced by its variant (whether the original is shown instead is the stage's draw)."""
    variants = _variants(inputs)
    weight = torch.ones_like(inputs.images[:, :1])
    return Augmented(variants, inputs.labels, weight, details={"variant": variants})
