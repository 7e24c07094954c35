"""Evidence metrics of an augmentation over a whole split: did the diagnostic evidence survive?

On a dataset with ROI masks (the demo's lesions), per method, counted over the samples the method actually
changed (a sample shown as it is tells nothing about the method):

- ``roi_unchanged``: the share of ROI pixels left as they were (within half an 8-bit step) — methods that move
  pixels (``standard``) report ``roi_moved`` instead: the share of ROI pixels no longer under the moved ROI;
- ``w_roi`` / ``w_off``: the mean mixing weight W (the share of foreign content) on the ROI and off it;
- ``saliency_iou``: IoU of the teacher's top-20 % saliency (the fixed top-k rule) before and after;
- ``label_consistency``: the teacher's accuracy on the augmented images (for label-mixing methods, against the
  dominant label), overall and per class;
- ``augmented_share``: how many of the samples the method changed at all;

and how much it changed — the other half of the claim, on the same images:

- ``delta_off``: the mean |Δ| off the lesion, in grey levels of 255 (every changed image's non-ROI pixels);
- ``moved_off``: the share of those pixels moved by more than 2 grey levels;
- ``protected_share``: the mean share of the image the method protected (for the methods that have such a region:
  MedDiffuseMix's W = 0 region, KeepAugment's pasted box); ``protected_to_lesion``: on lesion images, the protected
  pixels over the lesion pixels (how much more than the evidence is kept);
- ``untouched_share``: the share of all pixels left as they were (within half an 8-bit step);
- ``ssim``: the mean SSIM between each changed image and its original (1: identical).

On multi-label data the same metrics are reported per finding as ``<metric>:<finding>``
(:mod:`.evidence_findings`), the overall ones over the union of the findings' ROIs; ``label_consistency`` is then
the teacher's per-finding agreement (sigmoid > 0.5) with the known targets.

The generator alone is measured in :mod:`.variant_quality`; :func:`saliency_coverage` measures the teacher's maps
alone: how much of each lesion falls inside the evidence mask and the protected region, per saliency method.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from ..augment.cache import content_hashes
from ..augment.mix import top_fraction_iou
from ..augment.names import DEFAULT_SALIENCY_METHOD
from ..augment.saliency import SaliencyExtractor, model_identity
from ..loader import MedDiffuseLoader
from .evidence_findings import finding_metrics, finding_roi_sums, finding_teacher_sums

__all__ = ["EVIDENCE_METRICS", "evidence_metrics", "saliency_coverage"]

_UNCHANGED = 1.0 / 512  # within half an 8-bit step
EVIDENCE_METRICS = (
    "roi_unchanged",
    "roi_moved",
    "w_roi",
    "w_off",
    "saliency_iou",
    "label_consistency",
    "augmented_share",
    "delta_off",
    "moved_off",
    "protected_share",
    "protected_to_lesion",
    "untouched_share",
    "ssim",
)
_MOVED = 2.0 / 255  # "moved" means by more than 2 grey levels


class _Sums:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def add(self, name: str, numerator: float, denominator: float) -> None:
        self.values[name][0] += numerator
        self.values[name][1] += denominator

    def ratio(self, name: str) -> float | None:
        numerator, denominator = self.values.get(name, (0.0, 0.0))
        return numerator / denominator if denominator else None


def _predict(teacher: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher(images).argmax(dim=1)


def evidence_metrics(
    dataset: str,
    augment: Any,
    *,
    teacher: torch.nn.Module | None = None,
    saliency_method: str = DEFAULT_SALIENCY_METHOD,
    split: str = "train",
    batch_size: int = 64,
    seed: int = 0,
    max_batches: int | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """One pass of ``augment`` over ``split`` (all of it unless ``max_batches``); ``None`` where a metric does not
    apply (no ROI in the dataset, no teacher, a method that moves pixels)."""
    extractor = SaliencyExtractor(teacher, saliency_method) if teacher is not None else None
    shared = _shared_maps(augment, extractor)
    sums = _Sums()
    seen = changed = 0
    with MedDiffuseLoader(
        dataset, batch_size, split=split, augment=augment, as_dict=True, seed=seed, shuffle=True
    ) as loader:
        names = class_names or list(loader.dataset.class_names)
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            original, image = batch.get("original", batch["image"]), batch["image"]
            device = image.device
            # no stage (augment=None): nothing was changed; a stage says per sample what it changed
            augmented = batch.get("augmented", torch.zeros(len(image), dtype=torch.bool, device=device)).to(device)
            weight = batch.get("mix_weight", torch.zeros_like(image[:, :1])).to(device)
            seen += len(image)
            changed += int(augmented.sum())
            rows = torch.nonzero(augmented).flatten()
            if len(rows) == 0:
                continue
            _roi_sums(sums, batch, image[rows], original[rows], weight[rows], rows)
            _change_sums(sums, batch, image[rows], original[rows], rows)
            multi_label = batch["label"].dim() == 2
            if multi_label:
                finding_roi_sums(sums, batch, image[rows], original[rows], weight[rows], rows, names)
            if multi_label and teacher is not None and extractor is not None:
                finding_teacher_sums(sums, batch, teacher, extractor, image[rows], original[rows], rows, names)
            elif teacher is not None and extractor is not None:
                labels = _dominant_labels(batch).to(device)[rows]
                moved = "original_roi" in batch  # IoU compares places: meaningless once pixels moved
                after, logits = extractor.with_logits(image[rows], labels) if not moved else (None, None)
                predicted = _predict(teacher, image[rows]) if logits is None else logits.argmax(dim=1)
                sums.add("label_consistency", float((predicted == labels).sum()), len(rows))
                for label in labels.unique().tolist():
                    of_class = labels == label
                    sums.add(
                        f"label_consistency:{names[label]}",
                        float((predicted[of_class] == label).sum()),
                        float(of_class.sum()),
                    )
                if after is not None:
                    shown = original[rows]
                    keys = [batch["key"][i] for i in rows.tolist()]
                    before = (
                        extractor(shown, labels)
                        if shared is None
                        else shared.maps(shown, labels, keys, lambda shown=shown: content_hashes(shown))
                    )
                    iou = top_fraction_iou(before, after, 0.2)
                    sums.add("saliency_iou", float(iou.sum()), len(rows))
    metrics: dict[str, Any] = {name: sums.ratio(name) for name in EVIDENCE_METRICS}
    metrics["augmented_share"] = changed / seen if seen else None
    metrics["label_consistency_per_class"] = {
        name: sums.ratio(f"label_consistency:{name}") for name in names if f"label_consistency:{name}" in sums.values
    }
    metrics.update(finding_metrics(sums, names))
    metrics["samples"] = seen
    return metrics


def _shared_maps(augment: Any, extractor: SaliencyExtractor | None) -> Any:
    """The stage's saliency provider when it caches this teacher's maps by the extractor's method (the originals'
    maps are then read, not extracted again: the stage read or made them for the same batch), else None."""
    provider = getattr(augment, "saliency", None)
    if extractor is None or provider is None or provider.cache is None:
        return None
    same = provider.extractor.name == extractor.name and provider.teacher_identity == model_identity(extractor.model)
    return provider if same else None


def _change_sums(sums: _Sums, batch: dict[str, Any], image, original, rows) -> None:
    """How much the changed images changed, off the lesion and overall, and what the method protected."""
    from .similarity import ssim

    device = image.device
    change = (image - original).abs().amax(dim=1, keepdim=True)
    sums.add("ssim", float(ssim(image, original).sum()), len(rows))
    sums.add("untouched_share", float((change <= _UNCHANGED).sum()), float(change.numel()))
    roi = (batch["roi"].to(device)[rows] > 0)[:, :1] if "roi" in batch else torch.zeros_like(change, dtype=torch.bool)
    off = ~roi
    sums.add("delta_off", float((change * off).sum()) * 255, float(off.sum()))
    sums.add("moved_off", float(((change > _MOVED) & off).sum()), float(off.sum()))
    if "protected" not in batch:
        return
    protected = batch["protected"].to(device)[rows].bool()[:, :1]
    sums.add("protected_share", float(protected.sum()), float(protected.numel()))
    lesion = roi.flatten(1).any(dim=1)
    if lesion.any():
        sums.add("protected_to_lesion", float(protected[lesion].sum()), float(roi[lesion].sum()))


def _dominant_labels(batch: dict[str, Any]) -> torch.Tensor:
    target = batch.get("target")
    if target is not None and target.dim() == 2:
        return target.argmax(dim=1)
    return batch["label"]


def _roi_sums(sums: _Sums, batch: dict[str, Any], image, original, weight, rows) -> None:
    if "roi" not in batch:
        return
    device = image.device
    roi = (batch["roi"].to(device)[rows] > 0)[:, :1]
    lesion = roi.flatten(1).any(dim=1)
    off = ~roi
    sums.add("w_off", float((weight * off).sum()), float(off.sum()))
    if not lesion.any():
        return
    roi, weight = roi[lesion], weight[lesion]
    sums.add("w_roi", float((weight * roi).sum()), float(roi.sum()))
    if "original_roi" in batch:
        before = (batch["original_roi"].to(device)[rows] > 0)[:, :1][lesion]
        sums.add("roi_moved", float((before & ~roi).sum()), float(before.sum()))
        return
    unchanged = (image[lesion] - original[lesion]).abs().amax(dim=1, keepdim=True) <= _UNCHANGED
    sums.add("roi_unchanged", float((unchanged & roi).sum()), float(roi.sum()))


def saliency_coverage(
    dataset: str,
    teacher: torch.nn.Module,
    methods: tuple[str, ...],
    *,
    split: str = "train",
    batch_size: int = 64,
    max_batches: int | None = None,
    config: Any = None,
) -> dict[str, Any]:
    """Per saliency method, over the lesion images of ``split``: the share of lesion pixels inside the evidence
    mask (``S > quantile``) and inside the protected region (the mask and its margin), flat maps, seconds."""
    import time

    from ..augment.mix import MixConfig, dilate, evidence_of, is_flat

    config = config or MixConfig()
    extractors = {method: SaliencyExtractor(teacher, method) for method in methods}
    sums = {method: [0.0, 0.0, 0.0, 0, 0.0] for method in methods}  # in mask, in protected, lesion px, flat, s
    with MedDiffuseLoader(dataset, batch_size, split=split, as_dict=True, shuffle=False) as loader:
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            if "roi" not in batch:
                raise ValueError(f"{dataset}: saliency coverage needs ROI masks (roi.png members)")
            roi = batch["roi"][:, :1] > 0
            lesion = roi.flatten(1).any(dim=1)
            if not lesion.any():
                continue
            images, labels, roi = batch["image"][lesion], batch["label"][lesion], roi[lesion]
            for method, extractor in extractors.items():
                started = time.perf_counter()
                maps = extractor(images, labels)
                sums[method][4] += time.perf_counter() - started
                mask = evidence_of(maps, config)
                protected = dilate(mask, config.margin_for(maps.shape[-1]))
                sums[method][0] += float((mask & roi).sum())
                sums[method][1] += float((protected & roi).sum())
                sums[method][2] += float(roi.sum())
                sums[method][3] += int(is_flat(maps).sum())
    return {
        method: {
            "lesion_in_mask": inside / total if total else None,
            "lesion_in_protected": kept / total if total else None,
            "flat_maps": flat,
            "seconds": round(seconds, 2),
        }
        for method, (inside, kept, total, flat, seconds) in sums.items()
    }
