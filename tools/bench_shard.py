#!/usr/bin/env python3
"""Benchmark of ``meddiffuse-stream shard``: images/s with 1 and 2 workers on 64x64 and 512x512 PNG inputs.

Runs alternate (1 worker, 2 workers, 1, 2, ...) so machine drift hits both alike; the median of the repeats is
reported. Writes ``.bench/shard.json`` with ``ratio_2_vs_1_workers`` (the smaller of the two sizes' ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset


def make_inputs(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """Grey images with anatomy-like smooth structure plus noise (pure noise would make PNG unrealistically slow)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for index in range(count):
        phase = rng.uniform(0, 6.28, 3)
        smooth = np.sin(6 * xx + phase[0]) * np.cos(4 * yy + phase[1]) + np.sin(9 * (xx + yy) + phase[2])
        image = 128 + 50 * smooth + rng.normal(0, 6, (size, size))
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{index:05d}.png")
    return root


def run_once(src: Path, out: Path, workers: int, shard_size: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = convert_dataset(
        ImageFolderSource(), str(src), str(out), ConvertOptions(workers=workers, shard_size=shard_size), progress=False
    )
    return summary.converted / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".bench/shard.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=16000, help="number of 64x64 inputs")
    parser.add_argument("--large", type=int, default=800, help="number of 512x512 inputs")
    args = parser.parse_args()
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "repeats": args.repeats}
    ratios = []
    with tempfile.TemporaryDirectory() as scratch:
        for size, count, shard_size in ((64, args.small, 250), (512, args.large, 50)):
            src = make_inputs(Path(scratch) / f"in{size}", count, size)
            rates: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.repeats):
                for workers in (1, 2):
                    rates[workers].append(run_once(src, Path(scratch) / "out", workers, shard_size))
            one, two = statistics.median(rates[1]), statistics.median(rates[2])
            ratios.append(two / one)
            results[f"images_per_s_{size}px_1_worker"] = round(one, 1)
            results[f"images_per_s_{size}px_2_workers"] = round(two, 1)
            results[f"ratio_2_vs_1_workers_{size}px"] = round(two / one, 3)
            print(f"{size}x{size}: 1 worker {one:8.1f} img/s   2 workers {two:8.1f} img/s   ratio {two / one:.2f}")
    results["ratio_2_vs_1_workers"] = round(min(ratios), 3)
    print(f"ratio_2_vs_1_workers {results['ratio_2_vs_1_workers']:.2f} (goal >= 1.6)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
