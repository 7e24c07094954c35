#!/usr/bin/env python3
"""The protected region's trade-off, measured: MedDiffuseMix over a grid of MixConfig settings (by default
mass × margin × min_confidence; the other settings at their defaults).

For each setting, one pass of the stage over the train split (``--batches``: part of it), on the images it changed:
the share of lesion pixels kept (``roi_unchanged``) against how much the rest changed (``delta_off``,
``moved_off``), with the protected share and its ratio to the lesion. DA-Fusion's change on the same images is the
reference row. Writes ``sweep.csv`` and ``sweep.png`` (ROI kept against Δ off the lesion); ``make demo`` runs it
and the docs table is generated from the CSV.

    python tools/mix_sweep.py --dataset shards/demo --teacher .demo/teacher/checkpoint.pt \
        --generator .demo/generator --variant-cache .demo/variants --out .demo/sweep
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

COLUMNS = (
    "roi_unchanged",
    "delta_off",
    "moved_off",
    "protected_share",
    "protected_to_lesion",
    "ssim",
    "augmented_share",
)


# the whole train split per setting: on 512 images the share kept read ~1 point higher than on all 1,401
GRID = {"mass": [0.5, 0.6, 0.7], "margin": [1, 2], "min_confidence": [0.5, 0.7]}


def _axis(text: str) -> tuple[str, list]:
    """``name=v1,v2,...`` -> (name, values read as YAML: numbers and booleans)."""
    import yaml

    name, equals, values = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=V1,V2 (e.g. quantile=0.7,0.9)")
    return name.strip(), [yaml.safe_load(v) for v in values.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--teacher-model", default="cnn")
    parser.add_argument("--generator")
    parser.add_argument("--variant-cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--grid", type=_axis, action="append", default=[], help="NAME=V1,V2 (a MixConfig field)")
    parser.add_argument("--set", type=_axis, action="append", default=[], help="NAME=V: fixed for every setting")
    parser.add_argument("--batches", type=int, help="batches of 64 train images per setting (default: all)")
    parser.add_argument("--saliency-method", help="default: the stage's default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from meddiffuse_stream.augment.settings import StageSettings
    from meddiffuse_stream.jobs.evidence import evidence_metrics
    from meddiffuse_stream.jobs.experiment_findings import is_multi_label
    from meddiffuse_stream.jobs.stage_factory import build_stage

    common = dict(teacher=args.teacher, teacher_model=args.teacher_model, generator=args.generator)
    common["variant_cache"] = args.variant_cache
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    multi_label = is_multi_label(args.dataset)
    if multi_label:  # DA-Fusion is refused on finding vectors; each finding's ROI kept is reported instead
        print("multi-label dataset: no DA-Fusion reference row; roi_unchanged:<finding> per finding", flush=True)
    else:
        reference = build_stage("dafusion", args.dataset, **common, seed=args.seed)
        measured = evidence_metrics(args.dataset, reference, split="train", seed=args.seed, max_batches=args.batches)
        rows.append({"method": "dafusion", **{c: measured[c] for c in COLUMNS}})
    axes = dict(args.grid) or GRID
    fixed = {name: values[0] for name, values in args.set}
    grid = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    for number, chosen in enumerate(grid, 1):
        mix = {**fixed, **chosen}
        values = {"mix": mix, "cache_results": False}
        if args.saliency_method:
            values["saliency_method"] = args.saliency_method
        settings = StageSettings.for_method("meddiffusemix", values)
        stage = build_stage("meddiffusemix", args.dataset, **common, seed=args.seed, settings=settings)
        measured = evidence_metrics(args.dataset, stage, split="train", seed=args.seed, max_batches=args.batches)
        counts = stage.counters.as_dict()
        checked = {name: counts.get(name, 0) for name in ("accepted", "attenuated", "rejected")}
        per_finding = {k: v for k, v in measured.items() if k.startswith("roi_unchanged:")}
        rows.append({"method": "meddiffusemix", **mix, **{c: measured[c] for c in COLUMNS}, **checked, **per_finding})
        print(f"[{number}/{len(grid)}] {mix}: kept {measured['roi_unchanged']}, Δ {measured['delta_off']}", flush=True)
    fields = [
        "method",
        *dict.fromkeys(name for row in rows for name in row if name not in COLUMNS and name != "method"),
        *COLUMNS,
    ]
    with open(out / "sweep.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, out / "sweep.png")
    print(f"{len(grid)} settings in {time.perf_counter() - started:.0f} s -> {out / 'sweep.csv'}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    ours = [r for r in rows if r["method"] == "meddiffusemix" and r["roi_unchanged"] is not None]
    for row in ours:
        colour = "#4c72b0" if row.get("min_confidence", 0.7) >= 0.7 else "#dd8452"
        axis.scatter(row["delta_off"], row["roi_unchanged"], color=colour, s=12 + 10 * row.get("margin", 1))
    for row in rows:
        if row["method"] == "dafusion" and row["delta_off"] is not None:
            axis.axvline(row["delta_off"], color="#c44e52", linestyle="--", label="DA-Fusion Δ")
            axis.axvline(row["delta_off"] / 2, color="#c44e52", linestyle=":", label="half of DA-Fusion's Δ")
    axis.axhline(0.97, color="grey", linestyle=":", label="97 % of lesion pixels kept")
    axis.set_xlabel("mean |Δ| off the lesion (grey levels)")
    axis.set_ylabel("lesion pixels kept")
    axis.set_title("MedDiffuseMix settings (blue: teacher ≥ 70 % sure, orange: below; size: margin)", fontsize=8)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
