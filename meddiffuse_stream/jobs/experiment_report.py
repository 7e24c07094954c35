"""The experiment's table, its reading and its plots: mean ± 95 % CI over seeds, paired differences by seed.

The reading is generated from the numbers, never written by hand: a difference whose confidence interval
contains zero is reported as not distinguishable from seed-to-seed noise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .experiment_findings import findings_section
from .experiment_stats import REFERENCE, mean_ci

__all__ = ["mean_ci", "plots", "reading", "summarise"]

COLUMNS = (
    ("val AUC", "val", "roc_auc"),
    ("test AUC", "test", "roc_auc"),
    ("ROI kept", None, "roi_unchanged"),
    ("ROI moved", None, "roi_moved"),
    ("W on ROI", None, "w_roi"),
    ("W off ROI", None, "w_off"),
    ("saliency IoU", None, "saliency_iou"),
    ("teacher agrees", None, "label_consistency"),
    ("changed", None, "augmented_share"),
    ("Δ off lesion (grey)", None, "delta_off"),
    ("off-lesion px > 2", None, "moved_off"),
    ("protected", None, "protected_share"),
    ("protected / lesion", None, "protected_to_lesion"),
    ("SSIM", None, "ssim"),
)
UNBOUNDED = ("delta_off", "protected_to_lesion")  # plotted on their own scale, not [0, 1]


def _cell(values: list[float | None]) -> str:
    result = mean_ci(values)
    if result is None:
        return "n/a"
    mean, half = result
    return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"


def _groups(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return list(dict.fromkeys((r["method"], r.get("fraction", 1.0)) for r in rows))


def _values(
    rows: list[dict[str, Any]], method: str, fraction: float, split: str | None, metric: str
) -> dict[int, float | None]:
    """Per seed: the metric of ``split`` (or, for evidence metrics, of any split: they do not depend on it)."""
    chosen: dict[int, float | None] = {}
    for row in rows:
        same_split = split is None or row["split"] == split
        if row["method"] == method and row.get("fraction", 1.0) == fraction and same_split:
            chosen.setdefault(row["seed"], row.get(metric))
    return chosen


def summarise(
    rows: list[dict[str, Any]], variants: dict[str, Any] | None = None, saliency: dict[str, Any] | None = None
) -> str:
    """A markdown table (one row per method and fraction), the paired differences and the reading."""
    header = "| method | seeds | steps | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 3) + "|"]
    for method, fraction in _groups(rows):
        seeds = sorted({r["seed"] for r in rows if r["method"] == method and r.get("fraction", 1.0) == fraction})
        steps = _values(rows, method, fraction, None, "steps")
        cells = [_cell(list(_values(rows, method, fraction, split, metric).values())) for _, split, metric in COLUMNS]
        name = method if fraction == 1 else f"{method} ({fraction:g} of train)"
        most_steps = max((int(v) for v in steps.values() if v is not None), default=0)
        lines.append(f"| {name} | {len(seeds)} | {most_steps} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    differences = _differences(rows)
    if differences:
        text += "\n" + differences
    if variants:
        text += "\n" + _variant_line(variants)
    if saliency:
        text += "\n| saliency method (teacher) | lesion pixels in the mask | in mask + margin | flat maps | seconds |\n"
        text += "|---|---|---|---|---|\n"
        for method, values in saliency["methods"].items():
            inside, kept = values["lesion_in_mask"], values["lesion_in_protected"]
            text += (
                f"| {method} | {'n/a' if inside is None else f'{inside:.3f}'} | "
                f"{'n/a' if kept is None else f'{kept:.3f}'} | {values['flat_maps']} | {values['seconds']} |\n"
            )
    findings = findings_section(rows)
    return text + "\n" + reading(rows, variants) + "\n" + ("\n" + findings if findings else "")


def _variant_line(variants: dict[str, Any]) -> str:
    accuracy = ", ".join(f"{k.replace(':', ' ')} {v:.3f}" for k, v in variants["accuracy"].items())
    line = f"Generator {variants['generator']}"
    if variants.get("strength") is not None:
        line += f" (strength {variants['strength']:g}, {variants.get('steps')} DDIM steps)"
    line += f": teacher accuracy on originals and raw variants {accuracy}"
    if variants.get("distance") is not None:
        line += f"; variants differ from their image by {variants['distance']:.1f} grey levels on average"
    if variants.get("spread") is not None:
        line += f", from each other by {variants['spread']:.1f} (per-pixel std across variants)"
    if variants.get("frechet") is not None:
        line += (
            f"; Fréchet distance of the teacher's features, variants to originals {variants['frechet']:.2f} "
            f"(two halves of the originals: {variants['frechet_real']:.2f})"
        )
    return line + ".\n"


def _paired(
    rows: list[dict[str, Any]], method: str, other: str, fraction: float, split: str
) -> tuple[float, float, int] | None:
    mine, theirs = _values(rows, method, fraction, split, "roc_auc"), _values(rows, other, fraction, split, "roc_auc")
    pairs: list[float | None] = []
    for seed, value in mine.items():
        against = theirs.get(seed)
        if value is not None and against is not None:
            pairs.append(value - against)
    result = mean_ci(pairs)
    return (result[0], result[1], len(pairs)) if result is not None else None


def _differences(rows: list[dict[str, Any]]) -> str:
    methods = [m for m, _ in dict.fromkeys(_groups(rows))]
    if REFERENCE not in methods:
        return ""
    lines = ["| AUC difference (paired by seed) | fraction | val | test |", "|---|---|---|---|"]
    for fraction in dict.fromkeys(f for _, f in _groups(rows)):
        for other in dict.fromkeys(methods):
            if other == REFERENCE:
                continue
            cells = []
            for split in ("val", "test"):
                result = _paired(rows, REFERENCE, other, fraction, split)
                if result is None:
                    cells.append("n/a")
                else:
                    mean, half, _ = result
                    cells.append(f"{mean:+.3f}" if math.isnan(half) else f"{mean:+.3f} ± {half:.3f}")
            lines.append(f"| {REFERENCE} − {other} | {fraction:g} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _verdict(result: tuple[float, float, int] | None) -> str:
    if result is None:
        return "not measured"
    mean, half, count = result
    if math.isnan(half):
        return f"{mean:+.3f} (one seed: no interval)"
    if abs(mean) <= half:
        return f"{mean:+.3f} ± {half:.3f}, not distinguishable from seed noise ({count} seeds)"
    return f"{mean:+.3f} ± {half:.3f}, {'higher' if mean > 0 else 'lower'} beyond seed noise ({count} seeds)"


def reading(rows: list[dict[str, Any]], variants: dict[str, Any] | None = None) -> str:
    """Sentences that read the table as measured (evidence first, then accuracy)."""
    methods = list(dict.fromkeys(m for m, _ in _groups(rows)))  # each once, however many fractions
    fractions = list(dict.fromkeys(f for _, f in _groups(rows)))
    fraction = 1.0 if 1.0 in fractions else fractions[0]
    if REFERENCE not in methods:
        return "Reading: no `meddiffusemix` run in this experiment to compare."
    kept = {m: mean_ci(list(_values(rows, m, fraction, None, "roi_unchanged").values())) for m in methods}
    parts = [f"{m} {value[0]:.1%}" for m, value in kept.items() if value is not None and m != REFERENCE]
    ours = kept.get(REFERENCE)
    sentences = []
    if len(fractions) > 1:
        others = ", ".join(f"{f:g}" for f in fractions if f != fraction)
        sentences.append(
            f"With {'the whole train split' if fraction == 1.0 else f'{fraction:g} of train'} "
            f"(fractions {others}: the differences table):"
        )
    if ours is not None:
        sentences.append(
            f"On the images each method changed, MedDiffuseMix left {ours[0]:.1%} of lesion pixels "
            f"untouched ({', '.join(parts) or 'no baseline measured'})."
        )
        sentences.extend(_strength_sentences(rows, methods, fraction))
    for split, what in (("val", "in-domain (val)"), ("test", "domain-shift (test)")):
        # none: the control no augmentation must beat; then the saliency-kept and diffusion baselines
        for other in ("none", "keepaugment", "dafusion", "diffusemix", "standard", "cutmix", "mixup"):
            if other in methods:
                result = _paired(rows, REFERENCE, other, fraction, split)
                sentences.append(f"{what} AUC, MedDiffuseMix − {other}: {_verdict(result)}.")
    sentences.extend(_ablation_sentences(rows, methods, fraction))
    if variants:
        variant_rows = {k: v for k, v in variants["accuracy"].items() if k.startswith("variant:")}
        if variant_rows:
            worst = min(variant_rows, key=lambda name: variant_rows[name])
            sentences.append(
                f"The teacher recognises the class of raw variants at {min(variant_rows.values()):.1%} "
                f"at worst ({worst.split(':', 1)[1]}): what diffusion-only methods train on."
            )
    return "Reading: " + " ".join(sentences)


def _strength_sentences(rows: list[dict[str, Any]], methods: list[str], fraction: float) -> list[str]:
    """The other half of the claim, always beside the evidence: how much each method changed off the lesion."""

    def mean(method: str, metric: str) -> float | None:
        value = mean_ci(list(_values(rows, method, fraction, None, metric).values()))
        return None if value is None else value[0]

    delta, moved = mean(REFERENCE, "delta_off"), mean(REFERENCE, "moved_off")
    if delta is None or moved is None:
        return []
    others = [f"{m} {mean(m, 'delta_off'):.1f}" for m in methods if m != REFERENCE and mean(m, "delta_off")]
    sentence = (
        f"Off the lesion it moved pixels by {delta:.1f} grey levels on average ({', '.join(others) or 'no baseline'}), "
        f"{moved:.0%} of them by more than 2 levels"
    )
    share, ratio = mean(REFERENCE, "protected_share"), mean(REFERENCE, "protected_to_lesion")
    if share is not None:
        sentence += f"; it protected {share:.0%} of the image" + (f" ({ratio:.1f}× the lesion's area)" if ratio else "")
    return [sentence + "."]


def _ablation_sentences(rows: list[dict[str, Any]], methods: list[str], fraction: float) -> list[str]:
    """What each ablation (``meddiffusemix-*``) says: where it matches MedDiffuseMix's AUC on both splits, the AUC
    effect cannot be credited to the part it removes — only the evidence columns tell them apart."""
    sentences = []
    for ablation in (m for m in methods if m.startswith(f"{REFERENCE}-")):
        results = {split: _paired(rows, REFERENCE, ablation, fraction, split) for split in ("val", "test")}
        sentences.append(
            f"MedDiffuseMix − {ablation}: val {_verdict(results['val'])}, test {_verdict(results['test'])}."
        )
        within = [r for r in results.values() if r is not None and not math.isnan(r[1]) and abs(r[0]) <= r[1]]
        if len(within) == len(results):
            sentences.append(
                f"So on this data the AUC effect is not owed to what {ablation} removes; "
                "what it changes is how much of the evidence survives (ROI kept)."
            )
    return sentences


def plots(rows: list[dict[str, Any]], out: Path, variants: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(rows)
    labels = [m if f == 1 else f"{m} ({f:g})" for m, f in groups]
    panels: dict[str, list[tuple[str, str | None, str]]] = {
        "metrics.png": [
            ("val AUC", "val", "roc_auc"),
            ("test AUC", "test", "roc_auc"),
            ("val accuracy", "val", "accuracy"),
            ("test accuracy", "test", "accuracy"),
        ],
        "evidence.png": [c for c in COLUMNS if c[1] is None],
    }
    for name, columns in panels.items():
        extra = 1 if name == "evidence.png" and variants else 0
        figure, axes = plt.subplots(1, len(columns) + extra, figsize=(2.8 * (len(columns) + extra), 3.4), squeeze=False)
        for axis, (title, split, metric) in zip(axes[0], columns, strict=False):
            stats = [mean_ci(list(_values(rows, m, f, split, metric).values())) for m, f in groups]
            means = [s[0] if s else 0.0 for s in stats]
            errors = [0.0 if not s or math.isnan(s[1]) else s[1] for s in stats]
            axis.bar(range(len(groups)), means, yerr=errors, color="#4c72b0", capsize=2)
            axis.set_xticks(range(len(groups)), labels, rotation=60, ha="right", fontsize=6)
            axis.set_title(title, fontsize=9)
            if metric not in UNBOUNDED:
                axis.set_ylim(0, 1)
        if extra and variants:
            axis = axes[0][-1]
            names = list(variants["accuracy"])
            axis.bar(
                range(len(names)),
                [variants["accuracy"][n] for n in names],
                color=["#55a868" if n.startswith("original") else "#c44e52" for n in names],
            )
            axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=6)
            axis.set_title("teacher accuracy: originals / variants", fontsize=9)
            axis.set_ylim(0, 1)
        figure.tight_layout()
        figure.savefig(out / name, dpi=90)
        plt.close(figure)
