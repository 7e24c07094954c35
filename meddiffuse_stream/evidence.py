"""Evidence preservation of an augmentation, on datasets with ROI masks: how much of the ROI it left unchanged,
and whether the teacher's saliency stayed where it was (IoU of the top regions before and after)."""

from __future__ import annotations

from typing import Any

import torch

from .augment.mix import top_fraction_iou
from .augment.saliency import SaliencyExtractor
from .loader import MedDiffuseLoader

__all__ = ["evidence_preservation"]

_UNCHANGED = 1.0 / 512  # within half an 8-bit step


def evidence_preservation(
    dataset: str, augment: Any, *, teacher: torch.nn.Module | None = None, batches: int = 4, batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float | None]:  # fmt: skip
    """Averages over ``batches`` training batches; ``None`` where the dataset has no ROI or there is no teacher."""
    extractor = SaliencyExtractor(teacher, "gradcam") if teacher is not None else None
    roi_kept, roi_total, ious = 0.0, 0.0, []
    with MedDiffuseLoader(dataset, batch_size, augment=augment, as_dict=True, seed=seed) as loader:
        for index, batch in enumerate(loader):
            if index >= batches:
                break
            original = batch.get("original", batch["image"])
            if "roi" in batch:
                roi = batch["roi"].to(original.device) > 0
                unchanged = ((batch["image"] - original).abs().amax(dim=1, keepdim=True) <= _UNCHANGED) & roi
                roi_kept += float(unchanged.sum())
                roi_total += float(roi.sum())
            if extractor is not None:
                labels = batch["label"].to(original.device)
                ious.append(top_fraction_iou(extractor(original, labels), extractor(batch["image"], labels), 0.2))
    return {
        "roi_unchanged": roi_kept / roi_total if roi_total else None,
        "saliency_iou": float(torch.cat(ious).mean()) if ious else None,
    }
