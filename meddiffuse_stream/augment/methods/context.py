"""What a method sees of one batch, and what it gives back.

Saliency and variants are asked for, not handed over: a method that never looks at them costs nothing, and a
method whose whole results are cached (MedDiffuseMix with a frozen teacher) reads neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Augmented", "BatchInputs"]


@dataclass
class BatchInputs:
    """One batch (or the rows of it being augmented), on the stage's device.

    ``variant_index`` and ``mask_draw`` are the per-sample choices the stage drew for this epoch;
    ``saliency(rows)`` and ``variants(rows)`` return maps / variants for a subset of rows (all rows: ``None``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor  # one-hot (B, K)
    keys: Sequence[str]
    rng: np.random.Generator
    variant_index: np.ndarray
    mask_draw: np.ndarray
    roi: torch.Tensor | None = None
    saliency: Callable[[torch.Tensor | None], torch.Tensor] | None = None
    variants: Callable[[torch.Tensor | None], torch.Tensor] | None = None
    contents: Callable[[], list[str]] | None = None
    details: bool = True  # whether the caller will look at saliency / variant planes (previews, as_dict loaders)


@dataclass
class Augmented:
    """A method's result: images, targets ((B,) labels or (B, K) soft), the per-pixel share of foreign content
    W (B, 1, H, W), the ROI moved along (geometric methods), and the details shown in previews."""

    images: torch.Tensor
    targets: torch.Tensor
    weight: torch.Tensor
    roi: torch.Tensor | None = None
    details: dict[str, torch.Tensor] = field(default_factory=dict)
