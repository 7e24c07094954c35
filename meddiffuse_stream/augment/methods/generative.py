"""Diffusion baselines: DiffuseMix, DA-Fusion and a filtered hybrid — label-preserving, using the sample's cached
variant.

None of them looks at saliency: where the variant differs from the image, it differs everywhere, evidence
included. That is the gap MedDiffuseMix closes, and what the evidence metrics measure.

Prompt-free forms (no text-to-image model can be had here): the variant is the class-conditional generator's SDEdit
img2img output, conditioned on the label instead of DiffuseMix's style prompts ("autumn", "watercolor", ...) or
DA-Fusion's learned class tokens. ``hybrid-filter`` is what this project called GenMix before: the published GenMix
edits images with a prompt-guided image-editing model, which cannot be run here, so it is not claimed.
"""

from __future__ import annotations

import numpy as np
import torch

from .context import Augmented, BatchInputs
from .fractals import ifs_fractals

__all__ = ["dafusion", "diffusemix", "fractal", "hybrid", "hybrid_filter"]


def hybrid(images: torch.Tensor, rng: np.random.Generator, ramp: int = 0) -> torch.Tensor:
    """The share of the variant in a hybrid: one half of each image (left/right or top/bottom, either way round);
    ``ramp`` 0 is DiffuseMix's binary mask, more a linear ramp of that many pixels."""
    batch, _, height, width = images.shape
    weight = torch.zeros_like(images[:, :1])
    for index in range(batch):
        vertical = rng.random() < 0.5
        size = width if vertical else height
        position = torch.arange(size, device=images.device, dtype=images.dtype)
        if ramp <= 0:
            profile = (position >= size // 2).to(images.dtype)
        else:
            span = min(ramp, size // 2)
            profile = ((position - (size - span) / 2) / span).clamp(0, 1)
        if rng.random() < 0.5:
            profile = 1 - profile
        weight[index, 0] = profile.view(1, -1) if vertical else profile.view(-1, 1)
    return weight


def fractal(rng: np.random.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """Fractal images in [0, 1], ``(count, 1, height, width)``: iterated function systems (see ``fractals``)."""
    return ifs_fractals(rng, count, height, width)


def _variants(inputs: BatchInputs) -> torch.Tensor:
    assert inputs.variants is not None, "this method needs diffusion variants"
    return inputs.variants(None)


def diffusemix(inputs: BatchInputs, blend: float = 0.2) -> Augmented:
    """DiffuseMix: half image, half variant (a binary mask), then a fractal blended in at ``blend`` (λ = 0.2);
    the label is kept."""
    images, variants = inputs.images, _variants(inputs)
    share = hybrid(images, inputs.rng)
    mixed = (1 - share) * images + share * variants
    fractals = fractal(inputs.rng, len(images), *images.shape[-2:]).to(images)
    mixed = (1 - blend) * mixed + blend * fractals
    weight = (share * (1 - blend) + blend).clamp(0, 1)
    return Augmented(mixed, inputs.labels, weight, details={"variant": variants})


def hybrid_filter(inputs: BatchInputs, max_distance: float = 0.15) -> Augmented:
    """Half image, half variant over a 20 px ramp, but a variant whose mean absolute difference from its image
    exceeds ``max_distance`` is dropped (that image is kept as it is): far generated content is not trusted."""
    images, variants = inputs.images, _variants(inputs)
    distance = (images - variants).abs().flatten(1).mean(dim=1)
    trusted = (distance <= max_distance).to(images.dtype).view(-1, 1, 1, 1)
    share = hybrid(images, inputs.rng, ramp=20) * trusted
    return Augmented((1 - share) * images + share * variants, inputs.labels, share, details={"variant": variants})


def dafusion(inputs: BatchInputs) -> Augmented:
    """The image is replaced by its variant (whether the original is shown instead is the stage's draw)."""
    variants = _variants(inputs)
    weight = torch.ones_like(inputs.images[:, :1])
    return Augmented(variants, inputs.labels, weight, details={"variant": variants})
