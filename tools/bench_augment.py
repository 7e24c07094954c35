#!/usr/bin/env python3
"""Benchmark of the MedDiffuseMix device stage on 64x64 demo data, batch 64 (CPU here; CUDA where present).

- ``ratio_batched_vs_per_sample``: the stage's work (GradCAM saliency, mixing, preservation check) on a batch of
  64 against the same work done one sample at a time.
- ``ratio_warm_vs_cold``: an epoch of the stage with a warm variant cache against one that generates every variant
  (tiny UNet, SDEdit with 10 DDIM steps).
- ``ratio_meddiffusemix_vs_none``: the loader with ``augment=`` MedDiffuseMix (frozen teacher, warm cache) against
  ``augment=None``, same data, same workers.
Writes ``.bench/augment.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from meddiffuse_stream import ConvertOptions, DemoSource, MedDiffuseLoader, convert_dataset
from meddiffuse_stream.augment import AugmentStage, MixConfig
from meddiffuse_stream.augment.diffusion import ClassConditionalGenerator
from meddiffuse_stream.models import SmallCNN


def _stage(teacher, generator, cache: str | None, **kwargs) -> AugmentStage:
    return AugmentStage("meddiffusemix", 2, teacher=teacher, generator=generator, variant_cache=cache, seed=0,
                        **kwargs)  # fmt: skip


def _epoch(loader: MedDiffuseLoader) -> float:
    started, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch[0] if isinstance(batch, tuple) else batch["image"])
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".bench/augment.json")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    teacher = SmallCNN(1, 2, width=16).eval()
    generator = ClassConditionalGenerator.create(64, 1, 2, width=32, steps=10)
    results: dict[str, object] = {"device": device, "samples": args.samples, "batch": 64}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = str(scratch / "demo")
        convert_dataset(DemoSource(n=args.samples, size=64), None, data, ConvertOptions(splits={"train": 1.0}),
                        progress=False)  # fmt: skip

        # 1. batched against per sample: the same stage work, warm variant cache, teacher recomputed
        with MedDiffuseLoader(data, 64, as_dict=True) as loader:
            batch = next(iter(loader))
        # every sample mixed and checked (no originals, no confidence gate with this untrained teacher), results
        # and maps recomputed each call: the work itself, not a cache read
        stage = _stage(teacher, generator, str(scratch / "c1"), device=device, cache_results=False,
                       cache_saliency=False, original_probability=0.0, mix_config=MixConfig(min_confidence=0.0))
        stage(dict(batch))  # fills the variant cache: both timings below read variants from it
        batched, single = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            stage(dict(batch))
            batched.append(64 / (time.perf_counter() - started))
            started = time.perf_counter()
            for row in range(64):
                stage({"image": batch["image"][row : row + 1], "label": batch["label"][row : row + 1],
                       "key": batch["key"][row : row + 1]})  # fmt: skip
            single.append(64 / (time.perf_counter() - started))
        results["stage_images_per_s_batched"] = round(statistics.median(batched), 1)
        results["stage_images_per_s_per_sample"] = round(statistics.median(single), 1)
        results["ratio_batched_vs_per_sample"] = round(statistics.median(batched) / statistics.median(single), 2)

        # 2. an epoch that generates every variant against one that reads them all
        cache = str(scratch / "variants")
        cold_stage = _stage(teacher, generator, cache, device=device)
        with MedDiffuseLoader(data, 64, augment=cold_stage, num_workers=args.workers) as loader:
            cold = _epoch(loader)
        warm_rates = []
        for _ in range(args.repeats):
            warm_stage = _stage(teacher, generator, cache, device=device)
            with MedDiffuseLoader(data, 64, augment=warm_stage, num_workers=args.workers) as loader:
                warm_rates.append(_epoch(loader))
                assert warm_stage.counters["generator_calls"] == 0, "a warm epoch must not generate"
        warm = statistics.median(warm_rates)
        results.update(cold_images_per_s=round(cold, 1), warm_images_per_s=round(warm, 1),
                       ratio_warm_vs_cold=round(warm / cold, 2))  # fmt: skip

        # 3. the loader with the warm MedDiffuseMix stage against the loader alone, alternating
        plain_rates = []
        for _ in range(args.repeats):
            with MedDiffuseLoader(data, 64, num_workers=args.workers) as loader:
                _epoch(loader)  # start the workers outside the timing, as for the warm runs' second epoch
                plain_rates.append(_epoch(loader))
        mixed_rates = []
        for _ in range(args.repeats):
            stage = _stage(teacher, generator, cache, device=device)
            with MedDiffuseLoader(data, 64, augment=stage, num_workers=args.workers) as loader:
                _epoch(loader)
                mixed_rates.append(_epoch(loader))
        plain, mixed = statistics.median(plain_rates), statistics.median(mixed_rates)
        results.update(none_images_per_s=round(plain, 1), meddiffusemix_images_per_s=round(mixed, 1),
                       ratio_meddiffusemix_vs_none=round(mixed / plain, 3))  # fmt: skip
    for name in ("ratio_batched_vs_per_sample", "ratio_warm_vs_cold", "ratio_meddiffusemix_vs_none"):
        print(f"{name:30s} {results[name]}")
    print(json.dumps(results, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
