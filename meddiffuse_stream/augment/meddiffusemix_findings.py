"""MedDiffuseMix on multi-label images: protect the union of every finding's evidence, check every finding.

Per image, with its evidence classes (:mod:`.class_saliency`: the positive findings, unknown ones the teacher
believes present, or for an image without a finding the teacher's top one) and one saliency map per class,
computed for the whole batch in one call:

1. evidence unknown — some class's map is flat — means the image is not mixed (``no_evidence``); the teacher's
   confidence in some class's label (``p`` present, ``1 − p`` absent) below ``min_confidence``: ``unconfident``;
2. the protected region is the union over the image's classes of ``protected_region(map_c)`` — the evidence rule
   of :mod:`.mix`, applied per class — and W comes from :func:`~.mix.mix_weight` with that region (exactly 0 on
   it) and the per-pixel maximum of the maps for the ``(1 − S)`` term;
3. the check runs per finding: each class's evidence mask on ``x_aug`` must overlap the original's (IoU ≥
   ``min_iou``) and the teacher's confidence in the class's label may drop by at most ``max_prob_drop``; the image
   passes only if every one of its findings does, else it is retried at half strength, then kept as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .class_saliency import ClassMaps, pair_confidence
from .methods.context import BatchInputs
from .mix import evidence_iou, is_flat, mix, mix_weight, protected_region, top_fraction_iou
from .mixer_common import MixStatus, mask_rng

if TYPE_CHECKING:
    from .meddiffusemix import MedDiffuseMixer

__all__ = ["compute_findings", "findings_check"]

Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def compute_findings(mixer: MedDiffuseMixer, inputs: BatchInputs, rows: torch.Tensor) -> Result:
    """``(images, W, status, protected)`` for ``rows`` of a multi-label batch (see the module's steps)."""
    assert inputs.evidence is not None, "multi-label MedDiffuseMix needs a teacher's per-finding saliency"
    config = mixer.config
    images = inputs.images[rows]
    keys = [inputs.keys[i] for i in rows.tolist()]
    draws = inputs.mask_draw[rows.cpu().numpy()]
    evidence = inputs.evidence(rows)
    combined = evidence.combined()
    status = torch.full((len(rows),), MixStatus.UNCHECKED, dtype=torch.long, device=images.device)
    unknown = evidence.any(is_flat(evidence.maps)) | ~evidence.has_pairs()
    unsure = ~unknown & evidence.any(evidence.confidence < config.min_confidence)
    status[unknown] = MixStatus.NO_EVIDENCE
    status[unsure] = MixStatus.UNCONFIDENT
    weight = torch.zeros_like(images[:, :1])
    protected = torch.zeros_like(images[:, :1], dtype=torch.bool)
    out = images.clone()
    todo = torch.nonzero(~unknown & ~unsure).flatten()
    generators = [mask_rng(mixer.mask_seed, keys[i], int(draws[i])) for i in todo.tolist()]
    donors, todo, generators = mixer._donors(inputs, rows, todo, generators, status)
    if len(todo):
        pairs = evidence.take(todo)
        fields, boxes = mixer._draws(combined[todo], generators)
        region = boxes if boxes is not None else pairs.union(protected_region(pairs.maps, config))
        mixed, mixed_weight, mixed_status = _mix_and_check(
            mixer, images[todo], combined[todo], pairs, donors, fields, region
        )
        out[todo], weight[todo], status[todo], protected[todo] = mixed, mixed_weight, mixed_status, region
        _count(mixer, "fallback_class", pairs.classes[~pairs.present])
    weight = weight.to(torch.float16).to(images.dtype)
    out = torch.where(weight > 0, out.to(torch.float16).to(images.dtype), images)
    return out, weight, status, protected


def findings_check(mixer: MedDiffuseMixer, candidates: torch.Tensor, pairs: ClassMaps) -> torch.Tensor:
    """``(P,)``: per (image, finding) pair of ``candidates`` (the mixed images), whether that finding's evidence
    stayed (IoU of the evidence masks ≥ ``min_iou``) and the teacher's confidence in its label held (a drop of
    at most ``max_prob_drop``). Every map and probability of the batch comes from one call each."""
    config = mixer.config
    moved = mixer.saliency.extractor.for_classes(candidates, pairs.owner, pairs.classes)
    after = pair_confidence(mixer.saliency.probabilities(candidates), pairs.owner, pairs.classes, pairs.present)
    if config.iou_top is None:
        iou = evidence_iou(pairs.maps, moved, config)
    else:
        iou = top_fraction_iou(pairs.maps, moved, config.iou_top)
    return (iou >= config.min_iou) & (pairs.confidence - after <= config.max_prob_drop)


def _count(mixer: MedDiffuseMixer, name: str, classes: torch.Tensor) -> None:
    """``name:<finding index>`` counters, one per pair in ``classes`` (what the check failed on, per finding)."""
    found, counts = classes.unique(return_counts=True)
    for finding, count in zip(found.tolist(), counts.tolist(), strict=True):
        mixer.counters[f"{name}:{finding}"] += count


def _mix_and_check(
    mixer: MedDiffuseMixer,
    images: torch.Tensor,
    combined: torch.Tensor,
    pairs: ClassMaps,
    donors: torch.Tensor,
    fields: torch.Tensor,
    region: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    config = mixer.config
    scale = torch.ones(len(images), device=images.device)
    weight = mix_weight(combined, config, scale, field=fields, protected=region)
    out = mix(images, donors, weight)
    status = torch.full((len(images),), MixStatus.UNCHECKED, dtype=torch.long, device=images.device)
    if not config.check:
        return out, weight, status
    pending = torch.arange(len(images), device=images.device)
    for attempt in range(config.retries + 1):
        subset = pairs.take(pending)
        passed_pairs = findings_check(mixer, out[pending], subset)
        _count(mixer, "check_failed", subset.classes[~passed_pairs])
        passed = subset.every(passed_pairs)
        status[pending[passed]] = MixStatus.ACCEPTED if attempt == 0 else MixStatus.ATTENUATED
        pending = pending[~passed]
        if len(pending) == 0:
            break
        if attempt < config.retries:
            scale[pending] *= 0.5
            weight[pending] = mix_weight(
                combined[pending], config, scale[pending], field=fields[pending], protected=region[pending]
            )
            out[pending] = mix(images[pending], donors[pending], weight[pending])
    if len(pending):
        status[pending] = MixStatus.REJECTED
        weight[pending] = 0
        out[pending] = images[pending]
    return out, weight, status
