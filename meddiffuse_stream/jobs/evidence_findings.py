"""Evidence metrics per finding, on multi-label data with per-finding ROIs (``rois``, the multi-finding phantom).

A multi-label image's diagnosis is every finding it has, so "the evidence survived" is asked finding by finding,
over the images the method changed that carry the finding:

- ``roi_unchanged:<finding>``: the share of that finding's ROI pixels left as they were (within half an 8-bit
  step); ``roi_moved:<finding>`` for methods that move pixels (the share no longer under the moved ROI);
- ``w_roi:<finding>``: the mean mixing weight on that finding's ROI;
- ``saliency_iou:<finding>``: IoU of the teacher's top-20 % saliency for that finding before and after, on the
  images where it is a known positive (one batched call for every pair);
- ``label_consistency:<finding>``: the teacher's agreement (sigmoid > 0.5) with the finding's target (> 0.5) where
  it is known — the mixed target for label-mixing methods.

The overall ``roi_unchanged`` / ``delta_off`` of :mod:`.evidence` read the union ROI (``roi``): off *all* findings.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..augment.mix import top_fraction_iou
from ..augment.saliency import SaliencyExtractor

__all__ = ["FINDING_METRICS", "finding_metrics", "finding_roi_sums", "finding_teacher_sums"]

FINDING_METRICS = ("roi_unchanged", "roi_moved", "w_roi", "saliency_iou", "label_consistency")
_UNCHANGED = 1.0 / 512


class Sums(Protocol):
    values: dict[str, list[float]]

    def add(self, name: str, numerator: float, denominator: float) -> None: ...

    def ratio(self, name: str) -> float | None: ...


def finding_roi_sums(
    sums: Sums,
    batch: dict[str, Any],
    image: torch.Tensor,
    original: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    names: list[str],
) -> None:
    """ROI kept (or moved) and W on the ROI, per finding, over the changed ``rows`` that carry it."""
    if "rois" not in batch:
        return
    device = image.device
    rois = batch["rois"].to(device)[rows] > 0
    before = batch["original_rois"].to(device)[rows] > 0 if "original_rois" in batch else None
    unchanged = (image - original).abs().amax(dim=1, keepdim=True) <= _UNCHANGED
    for index, name in enumerate(names[: rois.shape[1]]):
        roi = rois[:, index : index + 1]
        carried = (roi if before is None else before[:, index : index + 1]).flatten(1).any(dim=1)
        if not carried.any():
            continue
        sums.add(f"w_roi:{name}", float((weight[carried] * roi[carried]).sum()), float(roi[carried].sum()))
        if before is not None:
            was = before[carried, index : index + 1]
            sums.add(f"roi_moved:{name}", float((was & ~roi[carried]).sum()), float(was.sum()))
        else:
            sums.add(
                f"roi_unchanged:{name}", float((unchanged[carried] & roi[carried]).sum()), float(roi[carried].sum())
            )


def finding_teacher_sums(
    sums: Sums,
    batch: dict[str, Any],
    teacher: torch.nn.Module,
    extractor: SaliencyExtractor,
    image: torch.Tensor,
    original: torch.Tensor,
    rows: torch.Tensor,
    names: list[str],
) -> None:
    """The teacher's agreement with each finding's target, and its saliency IoU per known positive finding."""
    device = image.device
    target = batch.get("target", batch["label"]).to(device)[rows].float()
    mask = batch.get("target_mask", batch.get("label_mask"))
    known = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.to(device)[rows] > 0.5
    with torch.no_grad():
        predicted = torch.sigmoid(teacher(image).float()) > 0.5
    agrees = (predicted == (target > 0.5)) & known
    sums.add("label_consistency", float(agrees.sum()), float(known.sum()))
    for index, name in enumerate(names):
        sums.add(f"label_consistency:{name}", float(agrees[:, index].sum()), float(known[:, index].sum()))
    if "original_roi" in batch:  # IoU compares places: meaningless once pixels moved
        return
    labels = batch["label"].to(device)[rows]
    label_known = batch["label_mask"].to(device)[rows] > 0.5 if "label_mask" in batch else torch.ones_like(known)
    owner, classes = ((labels > 0.5) & label_known).nonzero(as_tuple=True)
    if len(owner) == 0:
        return
    iou = top_fraction_iou(
        extractor.for_classes(original, owner, classes), extractor.for_classes(image, owner, classes), 0.2
    )
    sums.add("saliency_iou", float(iou.sum()), len(iou))
    for index, name in enumerate(names):
        chosen = classes == index
        if chosen.any():
            sums.add(f"saliency_iou:{name}", float(iou[chosen].sum()), float(chosen.sum()))


def finding_metrics(sums: Sums, names: list[str]) -> dict[str, float | None]:
    """``<metric>:<finding>`` for every per-finding metric that was measured."""
    return {
        f"{metric}:{name}": sums.ratio(f"{metric}:{name}")
        for metric in FINDING_METRICS
        for name in names
        if f"{metric}:{name}" in sums.values
    }
