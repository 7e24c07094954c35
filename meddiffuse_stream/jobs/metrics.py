"""Evaluation metrics: ROC AUC and average precision from scikit-learn (validated, what reviewers trust); accuracy,
macro-F1, Cohen's kappa and the confusion matrix of a multi-class model; per-finding AUC, AP and counts, over the
known labels only, of a multi-label one. ``metrics_table`` is what ``train`` prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["average_precision", "classification_metrics", "metrics_table", "multilabel_metrics", "roc_auc"]


def _sklearn() -> Any:
    try:
        import sklearn.metrics
    except ModuleNotFoundError:  # pragma: no cover - the torch extra installs it
        raise ModuleNotFoundError(
            "training metrics need scikit-learn: pip install 'meddiffuse-stream[torch]' (or scikit-learn)"
        ) from None
    return sklearn.metrics


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); ``None`` where one of the two classes is absent."""
    positives = np.asarray(positives).astype(bool)
    if positives.all() or not positives.any():
        return None
    return float(_sklearn().roc_auc_score(positives, np.asarray(scores, dtype=np.float64)))


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Average precision (area under the precision-recall curve, step-wise); ``None`` without a positive."""
    positives = np.asarray(positives).astype(bool)
    if not positives.any():
        return None
    return float(_sklearn().average_precision_score(positives, np.asarray(scores, dtype=np.float64)))


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """All metrics for ``labels`` (N,) and softmax ``probabilities`` (N, K)."""
    classes = len(class_names)
    predictions = probabilities.argmax(axis=1)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    total = max(int(confusion.sum()), 1)
    accuracy = float(np.trace(confusion) / total)
    f1s = []
    for k in range(classes):
        tp = confusion[k, k]
        precision = tp / max(confusion[:, k].sum(), 1)
        recall = tp / max(confusion[k, :].sum(), 1)
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    expected = float((confusion.sum(0) * confusion.sum(1)).sum() / total**2)
    kappa = 0.0 if expected == 1 else (accuracy - expected) / (1 - expected)
    per_class = {name: roc_auc(probabilities[:, k], labels == k) for k, name in enumerate(class_names)}
    auc = roc_auc(probabilities[:, 1], labels == 1) if classes == 2 else _mean(list(per_class.values()))
    return {
        "task": "multi_class",
        "samples": len(labels),
        "accuracy": accuracy,
        "macro_f1": float(np.mean(f1s)),
        "roc_auc": auc,
        "macro_auc": _mean(list(per_class.values())),
        "auc_per_class": per_class,  # one-vs-rest
        "cohen_kappa": float(kappa),
        "per_class": {
            name: {
                "true": int(confusion[k].sum()),
                "predicted": int(confusion[:, k].sum()),
                "correct": int(confusion[k, k]),
            }
            for k, name in enumerate(class_names)
        },
        "confusion": confusion.tolist(),
    }


def multilabel_metrics(
    targets: np.ndarray, mask: np.ndarray | None, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Per finding, over the samples whose label is known (``mask`` 1): ROC AUC, average precision and the
    positive / negative / unknown counts they rest on; macro AUC / AP average the findings that have both classes
    (a finding with no positive among the known labels has no AUC: ``null``, and says why in its counts)."""
    targets = np.asarray(targets, dtype=np.float64)
    known = np.ones_like(targets, dtype=bool) if mask is None else np.asarray(mask) > 0.5
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(class_names):
        rows = known[:, k]
        positives = targets[rows, k] > 0.5
        per_class[name] = {
            "positive": int(positives.sum()),
            "negative": int((~positives).sum()),
            "unknown": int((~rows).sum()),
            "auc": roc_auc(probabilities[rows, k], positives),
            "ap": average_precision(probabilities[rows, k], positives),
        }
    micro = roc_auc(probabilities[known], targets[known] > 0.5)
    macro = _mean([entry["auc"] for entry in per_class.values()])
    return {
        "task": "multi_label",
        "samples": len(targets),
        "roc_auc": macro,  # the headline number every report and --min-val-auc read
        "macro_auc": macro,
        "micro_auc": micro,
        "macro_ap": _mean([entry["ap"] for entry in per_class.values()]),
        "auc_per_class": {name: entry["auc"] for name, entry in per_class.items()},
        "ap_per_class": {name: entry["ap"] for name, entry in per_class.items()},
        "per_class": per_class,
    }


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def metrics_table(results: Mapping[str, Any], splits: Sequence[str] = ("val", "test")) -> str:
    """The lines ``train`` prints: one per split, and for a multi-label model a table of findings per split."""
    lines = []
    for split in splits:
        m = results.get(split)
        if m is None:
            continue
        if m.get("task") != "multi_label":
            lines.append(
                f"{split}: accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  AUC {_number(m['roc_auc'])}  "
                f"kappa {m['cohen_kappa']:.3f}  ({m['samples']} samples)"
            )
            continue
        lines.append(
            f"{split}: macro AUC {_number(m['macro_auc'])}  micro AUC {_number(m['micro_auc'])}  "
            f"macro AP {_number(m['macro_ap'])}  ({m['samples']} samples)"
        )
        width = max(len("finding"), *(len(name) for name in m["per_class"]))
        lines.append(f"  {'finding'.ljust(width)}  {'AUC':>6} {'AP':>6} {'pos':>6} {'neg':>6} {'unk':>6}")
        for name, c in m["per_class"].items():
            lines.append(
                f"  {name.ljust(width)}  {_number(c['auc']):>6} {_number(c['ap']):>6} "
                f"{c['positive']:>6} {c['negative']:>6} {c['unknown']:>6}"
            )
    return "\n".join(lines)
