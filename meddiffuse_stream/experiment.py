"""The paper's comparison as an experiment anyone can rerun: methods x seeds on one dataset, from a YAML file.

Writes ``runs/<method>-s<seed>/`` (checkpoint, metrics, evidence), ``results.csv``, ``results.md`` (mean ± 95 %
confidence interval per metric) and ``metrics.png`` / ``evidence.png``. Finished runs are reused on a re-run.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

from .augment.factory import ABLATIONS, build_stage, load_teacher

__all__ = ["ABLATIONS", "run_experiment", "summarise"]


METRICS = ("accuracy", "macro_f1", "roc_auc", "cohen_kappa")
# two-sided 95 % Student t quantiles for 1..30 degrees of freedom
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
        2.042]  # fmt: skip


def _stage_for(method: str, config: dict[str, Any], seed: int) -> Any:
    return build_stage(method, config["dataset"], teacher=config.get("teacher"),
                       teacher_model=config.get("teacher_model", "cnn"), generator=config.get("generator"),
                       variant_cache=config.get("variant_cache"), seed=seed)  # fmt: skip


def run_experiment(config_path: str | Path) -> Path:
    from .evidence import evidence_preservation
    from .train import TrainConfig, train

    config = yaml.safe_load(Path(config_path).read_text())
    for required in ("dataset", "out", "methods"):
        if required not in config:
            raise ValueError(f"{config_path}: missing '{required}'")
    out = Path(config["out"])
    rows = []
    cells = [
        (m, f, s) for f in config.get("fractions", [1.0]) for m in config["methods"] for s in config.get("seeds", [0])
    ]
    teacher = None  # the saliency teacher evidence is measured with
    for method, fraction, seed in cells:
        run = out / "runs" / (f"{method}-s{seed}" if fraction == 1 else f"{method}-f{fraction:g}-s{seed}")
        if not (run / "metrics.json").exists():
            stage = _stage_for(method, config, seed)
            train(TrainConfig(config["dataset"], str(run), model=config.get("model", "cnn"),
                                  augment=method if isinstance(stage, str) or stage is None else "meddiffusemix",
                                  epochs=config.get("epochs", 5), batch_size=config.get("batch_size", 64),
                                  learning_rate=config.get("lr", 1e-3), seed=seed,
                                  num_workers=config.get("workers", 0), loss=config.get("loss", "ce"),
                                  augment_stage=stage if not isinstance(stage, str) else None,
                                  device=config.get("device"), train_fraction=fraction))  # fmt: skip
            if teacher is None and config.get("teacher"):  # frozen: loaded once, for every cell that needs it
                teacher = load_teacher(config["dataset"], config["teacher"], config.get("teacher_model", "cnn"))
            evidence = evidence_preservation(config["dataset"], _stage_for(method, config, seed), teacher=teacher,
                                             seed=seed)  # fmt: skip
            (run / "evidence.json").write_text(json.dumps(evidence, indent=1))
        metrics = json.loads((run / "metrics.json").read_text())
        evidence = json.loads((run / "evidence.json").read_text())
        for split in config.get("report_splits", ["test"]):
            if split in metrics:
                rows.append({"method": method, "seed": seed, "fraction": fraction, "split": split,
                                 **{m: metrics[split][m] for m in METRICS}, **evidence})  # fmt: skip
    with open(out / "results.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(summarise(rows))
    _plots(rows, out)
    return out


def _mean_ci(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    t = _T95[min(len(values) - 1, 30) - 1] if len(values) <= 31 else 1.96
    return f"{mean:.3f} ± {t * spread / math.sqrt(len(values)):.3f}"


def summarise(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one row per method (and split), mean ± 95 % CI over seeds."""
    columns = [*METRICS, "roi_unchanged", "saliency_iou"]
    lines = ["| method | split | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 3) + "|"]
    for method, fraction, split in dict.fromkeys((r["method"], r.get("fraction", 1.0), r["split"]) for r in rows):
        group = [r for r in rows if (r["method"], r.get("fraction", 1.0), r["split"]) == (method, fraction, split)]
        cells = [_mean_ci([r[c] for r in group]) for c in columns]
        name = method if fraction == 1 else f"{method} ({fraction:g} of train)"
        lines.append(f"| {name} | {split} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    for name, columns in (("metrics.png", METRICS), ("evidence.png", ("roi_unchanged", "saliency_iou"))):
        figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.2), squeeze=False)
        for axis, column in zip(axes[0], columns, strict=True):
            means = []
            for method in methods:
                values = [r[column] for r in rows if r["method"] == method and r[column] is not None]
                means.append(sum(values) / len(values) if values else 0.0)
            axis.bar(range(len(methods)), means, color="#4c72b0")
            axis.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
            axis.set_title(column, fontsize=9)
            axis.set_ylim(0, 1)
        figure.tight_layout()
        figure.savefig(out / name, dpi=90)
        plt.close(figure)
