"""What a method sees of one batch, and what it gives back.

Saliency and variants are asked for, not handed over: a method that never looks at them costs nothing, and a
method whose whole results are cached (MedDiffuseMix with a frozen teacher) reads neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ..class_saliency import ClassMaps

__all__ = ["Augmented", "BatchInputs"]


@dataclass
class BatchInputs:
    """One batch (or the rows of it being augmented), on the stage's device.

    ``variant_index`` and ``mask_draw`` are the per-sample choices the stage drew for this epoch;
    ``saliency(rows)`` and ``variants(rows)`` return maps / variants for a subset of rows (all rows: ``None``).
    Multi-label batches carry ``labels`` and ``targets`` as float ``(B, C)`` finding vectors, ``label_mask``
    (1 = known) where the dataset has unknowns, and ``evidence(rows)``: one saliency map per finding whose evidence
    an image has (:class:`~meddiffuse_stream.augment.class_saliency.ClassMaps`); ``saliency`` is then the per-pixel
    maximum of an image's maps.
    """

    images: torch.Tensor
    labels: torch.Tensor  # (B,) class indices, or (B, C) finding vectors
    targets: torch.Tensor  # one-hot (B, K), or the finding vectors (B, C)
    keys: Sequence[str]
    rng: np.random.Generator
    variant_index: np.ndarray
    mask_draw: np.ndarray
    roi: torch.Tensor | None = None
    saliency: Callable[[torch.Tensor | None], torch.Tensor] | None = None
    variants: Callable[[torch.Tensor | None], torch.Tensor] | None = None
    contents: Callable[[], list[str]] | None = None
    details: bool = True  # whether the caller will look at saliency / variant planes (previews, as_dict loaders)
    label_mask: torch.Tensor | None = None  # multi-label with unknowns: (B, C), 1 = known
    evidence: Callable[[torch.Tensor | None], ClassMaps] | None = None  # multi-label: per-finding maps

    @property
    def multi_label(self) -> bool:
        """Finding vectors rather than class indices."""
        return self.labels.dim() == 2


@dataclass
class Augmented:
    """A method's result: images, targets ((B,) labels or (B, K) soft), the per-pixel share of foreign content
    W (B, 1, H, W), the ROI moved along (geometric methods), the details shown in previews, and for label-mixing
    methods on multi-label data the mixed label mask (a finding is known only where both images know it)."""

    images: torch.Tensor
    targets: torch.Tensor
    weight: torch.Tensor
    roi: torch.Tensor | None = None
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    target_mask: torch.Tensor | None = None
