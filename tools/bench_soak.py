#!/usr/bin/env python3
"""Memory soak: 20 epochs of the demo data through the training loop with MedDiffuseMix on a warm variant cache.

Each epoch streams the train split through ``MedDiffuseLoader`` (2 decode workers, batch 64) and the device stage
(frozen teacher, cached variants and saliency), and takes one optimiser step of a small CNN per batch, as
``meddiffuse-stream train`` does. The resident memory of the whole process tree (main process and workers) is read
after every epoch; ``rss_growth`` is (end − end of epoch 2) / end of epoch 2, goal < 0.05: the first two epochs fill
caches and allocator pools, a leak shows as growth after that. Writes ``.bench/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from process_memory import rss_of_tree

from meddiffuse_stream.jobs.stage_factory import build_stage
from meddiffuse_stream.loader import MedDiffuseLoader, sample_shape
from meddiffuse_stream.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shards/demo")
    parser.add_argument("--teacher", default=".demo/teacher/checkpoint.pt")
    parser.add_argument("--generator", default=".demo/generator")
    parser.add_argument("--variant-cache", default=".demo/variants")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=".bench/soak.json")
    args = parser.parse_args()
    for path in (args.dataset, args.teacher, args.generator, args.variant_cache):
        if not Path(path).exists():
            raise SystemExit(f"{path} is missing: run `make demo` first (bench-soak soaks the demo's warm cache)")

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the decode workers get the other cores, as in training here
    stage = build_stage(
        "meddiffusemix",
        args.dataset,
        teacher=args.teacher,
        generator=args.generator,
        variant_cache=args.variant_cache,
        seed=0,
    )
    channels, size, classes = sample_shape(args.dataset)
    rows = []
    with MedDiffuseLoader(
        args.dataset, args.batch, num_workers=args.workers, augment=stage, as_dict=True, seed=0
    ) as loader:
        model = build_model("cnn", channels, classes, size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            started, samples = time.perf_counter(), 0
            for batch in loader:
                targets = batch["target"] if "target" in batch else batch["label"]
                loss = F.cross_entropy(model(batch["image"]), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                samples += len(batch["image"])
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "epoch": epoch + 1,
                    "rss_mb": round(rss_of_tree(os.getpid()) / 1024, 1),
                    "samples_per_s": round(samples / seconds, 1),
                }
            )
            print(f"epoch {epoch + 1:2d}: {rows[-1]['rss_mb']:7.1f} MB  {rows[-1]['samples_per_s']:7.1f} samples/s")
        counters = stage.counters.as_dict()
    baseline = rows[1]["rss_mb"]
    growth = (rows[-1]["rss_mb"] - baseline) / baseline
    results = {
        "epochs": args.epochs,
        "batch": args.batch,
        "workers": args.workers,
        "rss_mb_after_epoch_2": baseline,
        "rss_mb_at_end": rows[-1]["rss_mb"],
        "rss_growth": round(growth, 4),
        "rss_growth_goal": 0.05,
        "samples_per_s_median": sorted(r["samples_per_s"] for r in rows)[len(rows) // 2],
        "diffusion_calls": counters.get("generator_calls", 0),
        "stage_counters": counters,
        "per_epoch": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    verdict = "ok" if growth < 0.05 else "OVER THE GOAL"
    print(
        f"rss_growth {growth:+.4f} after epoch 2 (goal < 0.05: {verdict}); diffusion calls "
        f"{results['diffusion_calls']}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
