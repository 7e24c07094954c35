"""Label-mixing baselines: Mixup, CutMix, SaliencyMix — each a pure function of a batch and a seeded generator.

They mix two images of the batch; W is the share of the other image. Targets mix with
:func:`~meddiffuse_stream.shardfmt.labels.mix_label_vectors`: one-hot class targets become soft targets that sum to
1, finding vectors mix finding by finding; on multi-label data with unknowns the label masks mix with
:func:`~meddiffuse_stream.shardfmt.labels.mix_label_masks` (a finding is known only where both images know it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...shardfmt.labels import mix_label_masks, mix_label_vectors
from .context import Augmented, BatchInputs

__all__ = ["cutmix", "mixup", "saliencymix"]


def _permutation(rng: np.random.Generator, size: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(rng.permutation(size), device=device)


def _mixed(
    inputs: BatchInputs, order: torch.Tensor, keep: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets ``keep × own + (1 − keep) × partner's`` and, where labels have a mask, the mask both share."""
    targets = mix_label_vectors(inputs.targets, inputs.targets[order], keep)
    mask = inputs.label_mask
    return targets, None if mask is None else mix_label_masks(mask, mask[order])


def mixup(inputs: BatchInputs, alpha: float = 0.4) -> Augmented:
    """One λ ~ Beta(alpha, alpha) per batch, mixed with a permutation of the batch."""
    images = inputs.images
    lam = float(inputs.rng.beta(alpha, alpha))
    order = _permutation(inputs.rng, len(images), images.device)
    mixed = lam * images + (1 - lam) * images[order]
    weight = torch.full_like(images[:, :1], 1 - lam)
    targets, mask = _mixed(inputs, order, lam)
    return Augmented(mixed, targets, weight, target_mask=mask)


def _box(rng: np.random.Generator, height: int, width: int, area: float, centre: tuple[int, int] | None = None):
    cut_h, cut_w = int(height * math.sqrt(area)), int(width * math.sqrt(area))
    cy, cx = centre if centre is not None else (int(rng.integers(0, height)), int(rng.integers(0, width)))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def cutmix(inputs: BatchInputs) -> Augmented:
    """A box from a permuted image; λ is the area actually kept (after clipping at the border)."""
    images = inputs.images
    height, width = images.shape[-2:]
    lam = float(inputs.rng.beta(1.0, 1.0))
    order = _permutation(inputs.rng, len(images), images.device)
    top, bottom, left, right = _box(inputs.rng, height, width, 1 - lam)
    weight = torch.zeros_like(images[:, :1])
    weight[:, :, top:bottom, left:right] = 1
    mixed = images * (1 - weight) + images[order] * weight
    kept = 1 - (bottom - top) * (right - left) / (height * width)
    targets, mask = _mixed(inputs, order, kept)
    return Augmented(mixed, targets, weight, target_mask=mask)


def saliencymix(inputs: BatchInputs) -> Augmented:
    """Per sample, a box around the source image's saliency peak is pasted at the same place."""
    assert inputs.saliency is not None, "saliencymix needs saliency"
    images, rng = inputs.images, inputs.rng
    saliency = inputs.saliency(None)
    height, width = images.shape[-2:]
    order = _permutation(rng, len(images), images.device)
    weight = torch.zeros_like(images[:, :1])
    kept = torch.empty(len(images), device=images.device, dtype=images.dtype)
    for index in range(len(images)):
        source = int(order[index])
        peak = int(saliency[source].flatten().argmax())
        top, bottom, left, right = _box(rng, height, width, 1 - float(rng.beta(1.0, 1.0)), divmod(peak, width))
        weight[index, :, top:bottom, left:right] = 1
        kept[index] = 1 - (bottom - top) * (right - left) / (height * width)
    mixed = images * (1 - weight) + images[order] * weight
    targets, mask = _mixed(inputs, order, kept.view(-1, 1))
    return Augmented(mixed, targets, weight, details={"saliency": saliency}, target_mask=mask)
