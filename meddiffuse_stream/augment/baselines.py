"""The paper's comparison methods, each a pure function of a batch and a seeded generator.

Every function takes float images ``(B, C, H, W)``, one-hot or soft targets ``(B, K)`` and a
``numpy.random.Generator`` (all draws come from it), plus saliency maps or diffusion variants where the method uses
them; it returns ``(images, targets, weight)`` where ``weight`` is the per-pixel share of foreign content
``(B, 1, H, W)`` (zeros for methods that only transform). Label-mixing methods return soft targets that sum to 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "cutmix",
    "dafusion",
    "diffusemix",
    "fractal",
    "genmix",
    "hybrid",
    "mixup",
    "saliencymix",
    "standard",
]

Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _zeros(images: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(images[:, :1])


def _permutation(rng: np.random.Generator, size: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(rng.permutation(size), device=device)


def standard(images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator) -> Result:
    """Horizontal flips (p = 0.5), rotations within ±10°, brightness ±0.1 and contrast ×[0.9, 1.1]."""
    batch = len(images)
    flips = torch.as_tensor(rng.random(batch) < 0.5, device=images.device)
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
    angles = torch.as_tensor(rng.uniform(-10, 10, batch) * math.pi / 180, device=images.device, dtype=images.dtype)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = torch.as_tensor(rng.uniform(-0.1, 0.1, batch), device=images.device, dtype=images.dtype)
    contrast = torch.as_tensor(rng.uniform(0.9, 1.1, batch), device=images.device, dtype=images.dtype)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast.view(-1, 1, 1, 1) + mean + brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    return images, targets, _zeros(images)


def mixup(images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, alpha: float = 0.4) -> Result:
    """One λ ~ Beta(alpha, alpha) per batch, mixed with a permutation of the batch."""
    lam = float(rng.beta(alpha, alpha))
    order = _permutation(rng, len(images), images.device)
    mixed = lam * images + (1 - lam) * images[order]
    weight = torch.full_like(images[:, :1], 1 - lam)
    return mixed, lam * targets + (1 - lam) * targets[order], weight


def _box(rng: np.random.Generator, height: int, width: int, area: float, centre: tuple[int, int] | None = None):
    cut_h, cut_w = int(height * math.sqrt(area)), int(width * math.sqrt(area))
    cy, cx = centre if centre is not None else (int(rng.integers(0, height)), int(rng.integers(0, width)))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def cutmix(images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator) -> Result:
    """A box from a permuted image; λ is the area actually kept (after clipping at the border)."""
    height, width = images.shape[-2:]
    lam = float(rng.beta(1.0, 1.0))
    order = _permutation(rng, len(images), images.device)
    top, bottom, left, right = _box(rng, height, width, 1 - lam)
    weight = _zeros(images)
    weight[:, :, top:bottom, left:right] = 1
    mixed = images * (1 - weight) + images[order] * weight
    kept = 1 - (bottom - top) * (right - left) / (height * width)
    return mixed, kept * targets + (1 - kept) * targets[order], weight


def saliencymix(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, saliency: torch.Tensor
) -> Result:
    """Per sample, a box around the source image's saliency peak is pasted at the same place."""
    height, width = images.shape[-2:]
    order = _permutation(rng, len(images), images.device)
    weight = _zeros(images)
    kept = torch.empty(len(images), device=images.device, dtype=images.dtype)
    for index in range(len(images)):
        source = int(order[index])
        peak = int(saliency[source].flatten().argmax())
        top, bottom, left, right = _box(rng, height, width, 1 - float(rng.beta(1.0, 1.0)), divmod(peak, width))
        weight[index, :, top:bottom, left:right] = 1
        kept[index] = 1 - (bottom - top) * (right - left) / (height * width)
    mixed = images * (1 - weight) + images[order] * weight
    return mixed, kept.view(-1, 1) * targets + (1 - kept.view(-1, 1)) * targets[order], weight


def hybrid(images: torch.Tensor, variants: torch.Tensor, rng: np.random.Generator, ramp: int = 20) -> torch.Tensor:
    """The share of the variant in DiffuseMix's hybrid: one half of each image, a linear ramp of ``ramp`` px."""
    batch, _, height, width = images.shape
    weight = _zeros(images)
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


def diffusemix(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, variants: torch.Tensor, blend: float = 0.2
) -> Result:
    """Half image, half variant (20 px ramp), then a fractal blended in at ``blend``; the label is kept."""
    share = hybrid(images, variants, rng)
    mixed = (1 - share) * images + share * variants
    fractals = fractal(rng, len(images), *images.shape[-2:]).to(images)
    mixed = (1 - blend) * mixed + blend * fractals
    return mixed, targets, (share * (1 - blend) + blend).clamp(0, 1)


def genmix(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, variants: torch.Tensor,
    max_distance: float = 0.15,
) -> Result:  # fmt: skip
    """The hybrid, but a variant whose mean absolute difference from its image exceeds ``max_distance`` is
    dropped (that image is kept as it is): generated content too far from the original is not trusted."""
    distance = (images - variants).abs().flatten(1).mean(dim=1)
    trusted = (distance <= max_distance).to(images.dtype).view(-1, 1, 1, 1)
    share = hybrid(images, variants, rng) * trusted
    return (1 - share) * images + share * variants, targets, share


def dafusion(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, variants: torch.Tensor, p: float = 0.5
) -> Result:
    """Each image is replaced by its variant with probability ``p``; the label is kept."""
    replace = torch.as_tensor(rng.random(len(images)) < p, device=images.device).view(-1, 1, 1, 1)
    weight = replace.to(images.dtype).expand_as(images[:, :1]).clone()
    return torch.where(replace, variants, images), targets, weight
