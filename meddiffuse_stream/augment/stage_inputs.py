"""What the device stage hands a method: one batch's rows with saliency, evidence and variants asked for lazily.

Saliency, per-finding evidence and variants are computed at most once per batch (memoised here) and only if the
method asks: a method that never looks at them costs nothing, and a method whose whole results are cached reads
neither. On multi-label batches ``saliency(rows)`` is the per-pixel maximum of each image's per-finding maps
(:mod:`.class_saliency`), so methods written for one map (SaliencyMix, KeepAugment) see every finding's evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .cache import content_hashes
from .class_saliency import ClassMaps, evidence_classes, pair_confidence
from .methods import BatchInputs
from .providers import SaliencyProvider, VariantProvider

__all__ = ["Rows", "batch_inputs"]


@dataclass(frozen=True)
class Rows:
    """The rows of a batch a method augments, and the stage's draws for them."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    keys: Sequence[str]
    variant_index: np.ndarray
    mask_draw: np.ndarray
    roi: torch.Tensor | None
    label_mask: torch.Tensor | None


def batch_inputs(
    rows: Rows,
    saliency_provider: SaliencyProvider | None,
    variant_provider: VariantProvider,
    needs_variants: bool,
    details: bool,
    rng: np.random.Generator,
) -> BatchInputs:
    """:class:`BatchInputs` whose ``saliency`` / ``evidence`` / ``variants`` compute on first use, once."""
    images, labels, keys = rows.images, rows.labels, rows.keys
    multi_label = labels.dim() == 2
    hashes: list[str] = []

    def contents() -> list[str]:  # hashed once per batch, only if a cache key needs it
        if not hashes:
            hashes.extend(content_hashes(images))
        return hashes

    memo: dict[str, Any] = {}

    def evidence(subset: torch.Tensor | None) -> ClassMaps:
        if "evidence" not in memo:
            assert saliency_provider is not None
            probabilities = saliency_provider.probabilities(images)
            owner, classes, present = evidence_classes(labels, rows.label_mask, probabilities)
            maps = saliency_provider.class_maps(images, owner, classes, keys, contents)
            confidence = pair_confidence(probabilities, owner, classes, present)
            memo["evidence"] = ClassMaps(owner, classes, present, maps, confidence, len(images))
        found: ClassMaps = memo["evidence"]
        return found if subset is None else found.take(subset)

    def saliency(subset: torch.Tensor | None) -> torch.Tensor:
        if "saliency" not in memo:
            assert saliency_provider is not None
            if multi_label:
                memo["saliency"] = evidence(None).combined()
            else:
                memo["saliency"] = saliency_provider.maps(images, labels, keys, contents)
        return memo["saliency"] if subset is None else memo["saliency"][subset]

    def variants(subset: torch.Tensor | None) -> torch.Tensor:
        if subset is None:
            if "variants" not in memo:
                memo["variants"] = variant_provider.variants(images, labels, keys, contents(), rows.variant_index)
            return memo["variants"]
        if "variants" in memo:
            return memo["variants"][subset]
        picked = subset.tolist()
        return variant_provider.variants(
            images[subset],
            labels[subset],
            [keys[i] for i in picked],
            [contents()[i] for i in picked],
            rows.variant_index[picked],
        )

    return BatchInputs(
        images,
        labels,
        rows.targets,
        keys,
        rng,
        rows.variant_index,
        rows.mask_draw,
        rows.roi,
        saliency=saliency if saliency_provider is not None else None,
        variants=variants if needs_variants else None,
        contents=contents,
        details=details,
        label_mask=rows.label_mask,
        evidence=evidence if saliency_provider is not None and multi_label else None,
    )
