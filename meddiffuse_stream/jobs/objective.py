"""What a classifier optimises and how it is scored, read from ``dataset.json``'s ``task``.

``multi_class``: cross-entropy on class indices (or the soft targets of a label-mixing augmentation), softmax
scores. ``multi_label``: binary cross-entropy with logits per finding, each term weighted by the label mask so an
unknown finding (CheXpert's uncertain under ``--uncertain ignore``) adds nothing to the loss, normalised by the
known labels of the batch; ``--loss weighted`` sets each finding's ``pos_weight`` to negatives / positives of the
train split (from dataset.json's counts), the usual answer to rare findings. Sigmoid scores. An augmentation's
mixed ``target`` and ``target_mask`` (label-mixing methods on finding vectors) take the place of ``label`` and
``label_mask``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..shardfmt.manifest import Manifest
from .metrics import classification_metrics, multilabel_metrics

__all__ = ["LOSSES", "Objective", "check_trainable", "masked_bce_with_logits", "objective_for"]

LOSSES = ("ce", "weighted")


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels (``mask`` 1); 0 (with a gradient) when none is known."""
    logits, targets = logits.float(), targets.float()
    weight = torch.ones_like(targets) if mask is None else mask.float()
    total = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, pos_weight=pos_weight, reduction="sum")
    return total / weight.sum().clamp_min(1.0)


@dataclass(frozen=True)
class Objective:
    """The loss, the scores and the metrics of one dataset's task."""

    task: str
    class_names: tuple[str, ...]
    weight: torch.Tensor | None = None  # multi-class: per-class weight; multi-label: per-finding pos_weight

    def loss(self, logits: torch.Tensor, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        """The batch's loss: its mixed ``target`` where an augmentation made one, else its ``label``."""
        targets = batch["target"] if "target" in batch else batch["label"]
        targets = targets.to(device, non_blocking=True)
        if self.task != "multi_label":
            return F.cross_entropy(logits, targets, weight=self.weight)
        mask = batch.get("target_mask", batch.get("label_mask"))
        mask = None if mask is None else mask.to(device, non_blocking=True)
        return masked_bce_with_logits(logits, targets, mask, self.weight)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: softmax over classes, or each finding's sigmoid."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.task == "multi_label" else torch.softmax(logits, dim=1)

    def rows(self, batch: Mapping[str, Any], scores: torch.Tensor) -> dict[str, tuple[Any, Any, list[float]]]:
        """``key -> (label, mask, scores)`` of one evaluation batch, as plain lists (gathered across ranks)."""
        labels = batch["label"].tolist()
        masks = batch["label_mask"].tolist() if "label_mask" in batch else [None] * len(labels)
        return {
            key: (label, mask, row)
            for key, label, mask, row in zip(batch["key"], labels, masks, scores.cpu().tolist(), strict=True)
        }

    def metrics(self, rows: Mapping[str, tuple[Any, Any, list[float]]]) -> dict[str, Any]:
        keys = sorted(rows)
        scores = np.array([rows[k][2] for k in keys], dtype=np.float64).reshape(len(keys), len(self.class_names))
        if self.task != "multi_label":
            return classification_metrics(np.array([rows[k][0] for k in keys]), scores, list(self.class_names))
        targets = np.array([rows[k][0] for k in keys], dtype=np.float64).reshape(scores.shape)
        masks = [rows[k][1] for k in keys]
        mask = None if any(m is None for m in masks) else np.array(masks, dtype=np.float64).reshape(scores.shape)
        return multilabel_metrics(targets, mask, scores, self.class_names)


def _pos_weight(manifest: Manifest, where: str) -> torch.Tensor:
    counts = manifest.label_counts("train")
    if counts is None:
        raise ValueError(f"--loss weighted needs the train split's label counts; {where}'s dataset.json has none")
    weights = [c.negative / c.positive if c.positive else 1.0 for c in counts]
    return torch.tensor(weights, dtype=torch.float32)


def _class_weight(manifest: Manifest, where: str) -> torch.Tensor:
    counts = manifest.class_counts("train")
    if counts is None:
        raise ValueError(f"--loss weighted needs the class counts a dataset.json records; {where!r} has none")
    values = np.array(counts, dtype=np.float64)
    return torch.as_tensor(values.sum() / np.maximum(values, 1) / len(values), dtype=torch.float32)


def objective_for(manifest: Manifest, loss: str, where: str, device: torch.device) -> Objective:
    """The objective of ``manifest``'s task; ``loss`` is ``ce`` (plain) or ``weighted``."""
    if loss not in LOSSES:
        raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    weight = None
    if loss == "weighted":
        weight = (_pos_weight if manifest.task == "multi_label" else _class_weight)(manifest, where).to(device)
    return Objective(manifest.task, tuple(manifest.class_names), weight)


def _multi_label_refusal(augment: str | None) -> str | None:
    """Why ``augment`` cannot train on a multi-label dataset, or ``None`` (a configured stage, ``"stage"``, was
    checked by the loader that runs it)."""
    if augment in (None, "none", "stage"):
        return None
    from ..augment.methods import multi_label_refusal

    return multi_label_refusal(augment)


def check_trainable(manifest: Manifest, where: str, augment: str | None) -> None:
    """A classifier needs classes to tell apart; say so before anything starts, with what to do."""
    names: Sequence[str] = manifest.class_names
    if manifest.task == "multi_label":
        refusal = _multi_label_refusal(augment)
        if refusal is not None:
            raise ValueError(f"{where}: {refusal}")
        counts = manifest.label_counts("train")
        if counts is not None and not any(c.positive and c.negative for c in counts):
            raise ValueError(
                f"{where}: no finding of the train split has both positive and negative known labels; "
                "a multi-label classifier has nothing to learn from"
            )
        return
    if len(names) < 2:
        found = f"only {list(names)}" if names else "no class_names"
        raise ValueError(
            f"{where}: dataset.json has {found}; a classifier needs at least two named classes "
            "(convert with --classes, or fix class_names)"
        )
    counts_mc = manifest.class_counts("train")
    if counts_mc is not None and sum(1 for n in counts_mc if n) < 2:
        present = [c for c, n in zip(names, counts_mc, strict=True) if n] or "none"
        raise ValueError(
            f"{where}: the train split holds samples of {present} only; a classifier needs at least "
            "two classes to learn from"
        )
