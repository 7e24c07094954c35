"""The experiment on multi-label data: row values of a multi-label model, and the report's per-finding table.

A multi-label image keeps its diagnosis only if every finding keeps its evidence, so the report shows, per method
and finding, the finding's AUC and its evidence metrics (ROI kept on the images the method changed, W on the ROI,
the teacher's saliency IoU and agreement), and a reading that names the finding each method kept least of — a
mean over findings would hide a finding a method loses. Every number comes from ``results.csv``'s rows.
"""

from __future__ import annotations

from typing import Any

from .experiment_stats import REFERENCE, mean_ci

__all__ = ["MULTI_LABEL_METRICS", "findings_of", "findings_section", "is_multi_label", "split_metrics"]

MULTI_LABEL_METRICS = ("roc_auc", "macro_ap", "micro_auc")
KEEP_GOAL = 0.97  # the share of every finding's ROI pixels MedDiffuseMix is to keep on the images it changes
COLUMNS = (
    ("val AUC", "val", "auc"),
    ("test AUC", "test", "auc"),
    ("ROI kept", None, "roi_unchanged"),
    ("ROI moved", None, "roi_moved"),
    ("W on ROI", None, "w_roi"),
    ("saliency IoU", None, "saliency_iou"),
    ("teacher agrees", None, "label_consistency"),
)


def split_metrics(metrics: dict[str, Any], plain: tuple[str, ...]) -> dict[str, Any]:
    """One split's row values: ``plain`` (the classification metrics), or a multi-label model's macro / micro
    scores and each finding's AUC (``auc:<finding>``)."""
    if metrics.get("task") != "multi_label":
        return {m: metrics[m] for m in plain}
    values = {m: metrics.get(m) for m in MULTI_LABEL_METRICS}
    values.update({f"auc:{name}": auc for name, auc in metrics.get("auc_per_class", {}).items()})
    return values


def is_multi_label(dataset: str) -> bool:
    from ..nodes.source import open_dataset

    return open_dataset(dataset, None).task == "multi_label"


def findings_of(rows: list[dict[str, Any]]) -> list[str]:
    """The findings named by ``auc:<finding>`` columns, in column order (none: not a multi-label experiment)."""
    columns = dict.fromkeys(key for row in rows for key in row)
    return [key.split(":", 1)[1] for key in columns if key.startswith("auc:")]


def _per_seed(rows, method: str, split: str | None, column: str) -> list[float | None]:
    chosen: dict[Any, Any] = {}
    for row in rows:
        if row["method"] == method and row.get("fraction", 1.0) == 1.0 and (split is None or row["split"] == split):
            chosen.setdefault(row["seed"], row.get(column))
    return [None if v == "" else v for v in chosen.values()]


def _cell(values: list[float | None]) -> str:
    result = mean_ci(values)
    if result is None:
        return "n/a"
    mean, half = result
    return f"{mean:.3f}" if half != half else f"{mean:.3f} ± {half:.3f}"


def findings_section(rows: list[dict[str, Any]]) -> str:
    """The per-finding table and its reading; empty for an experiment without findings."""
    findings = findings_of(rows)
    if not findings:
        return ""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    lines = ["| method | finding | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for method in methods:
        for finding in findings:
            cells = [_cell(_per_seed(rows, method, split, f"{metric}:{finding}")) for _, split, metric in COLUMNS]
            lines.append(f"| {method} | {finding} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _reading(rows, methods, findings) + "\n"


def _reading(rows: list[dict[str, Any]], methods: list[str], findings: list[str]) -> str:
    """Per method the share of each finding's ROI it kept, and whether MedDiffuseMix kept the goal for every one."""

    def kept(method: str, finding: str) -> float | None:
        result = mean_ci(_per_seed(rows, method, None, f"roi_unchanged:{finding}"))
        return None if result is None else result[0]

    sentences = []
    for method in methods:
        shares = {f: kept(method, f) for f in findings}
        measured = {f: v for f, v in shares.items() if v is not None}
        if not measured:
            continue
        worst = min(measured, key=lambda f: measured[f])
        listed = ", ".join(f"{f} {v:.1%}" for f, v in measured.items())
        sentences.append(f"{method} kept {listed} of the findings' ROI pixels (least: {worst})")
    text = "Per finding, on the images each method changed: " + "; ".join(sentences) + "."
    ours = {f: kept(REFERENCE, f) for f in findings}
    if all(v is not None for v in ours.values()):
        below = [f for f, v in ours.items() if v is not None and v < KEEP_GOAL]
        text += (
            f" MedDiffuseMix kept at least {KEEP_GOAL:.0%} of every finding's ROI pixels."
            if not below
            else f" MedDiffuseMix kept less than {KEEP_GOAL:.0%} of {', '.join(below)}."
        )
    return text
