"""Classification metrics written here (no sklearn): accuracy, macro-F1, ROC AUC (binary and one-vs-rest),
Cohen's kappa and per-class counts, from labels and predicted probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["classification_metrics", "roc_auc"]


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank statistic (ties get average ranks); ``None`` with one class only."""
    positives = positives.astype(bool)
    count_pos, count_neg = int(positives.sum()), int((~positives).sum())
    if count_pos == 0 or count_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return float((ranks[positives].sum() - count_pos * (count_pos + 1) / 2) / (count_pos * count_neg))


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """All metrics for ``labels`` (N,) and ``probabilities`` (N, K)."""
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
    if classes == 2:
        auc = roc_auc(probabilities[:, 1], labels == 1)
    else:
        per_class = [roc_auc(probabilities[:, k], labels == k) for k in range(classes)]
        present = [a for a in per_class if a is not None]
        auc = float(np.mean(present)) if present else None
    return {
        "samples": len(labels),
        "accuracy": accuracy,
        "macro_f1": float(np.mean(f1s)),
        "roc_auc": auc,
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
