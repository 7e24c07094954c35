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


def make_demo(
    root: Path, samples: int, size: int, workers: int = 1, shard_size: int = 1000, val_fraction: float = 0.0
) -> str:
    """A demo dataset of ``samples`` images of ``size`` px under ``root`` (train split only, or train and val);
    reused if there."""
    data = root / (f"demo-{size}px-{samples}" + (f"-val{val_fraction:g}" if val_fraction else ""))
    if not (data / "dataset.json").exists():
        splits = {"train": 1 - val_fraction, "val": val_fraction} if val_fraction else {"train": 1.0}
        options = ConvertOptions(splits=splits, workers=workers, shard_size=shard_size)
        convert_dataset(DemoSource(n=samples, size=size), None, str(data), options, progress=False)
    return str(data)


def tiny_models(size: int) -> tuple[torch.nn.Module, ClassConditionalGenerator]:
    """The benchmark's teacher (small CNN for GradCAM) and generator (tiny UNet, SDEdit with 10 DDIM steps)."""
    torch.manual_seed(0)
    return SmallCNN(1, 2, width=16).eval(), ClassConditionalGenerator.create(size, 1, 2, width=32, steps=10)


def meddiffusemix_stage(teacher, generator, cache: str | None, **kwargs) -> AugmentStage:
    return AugmentStage("meddiffusemix", 2, teacher=teacher, generator=generator, variant_cache=cache, seed=0, **kwargs)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a clock read after it counts that work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def epoch_rate(loader: MedDiffuseLoader) -> float:
    """Images per second over one epoch of ``loader`` (GPU work included)."""
    started, count, device = time.perf_counter(), 0, "cpu"
    for batch in loader:
        images = batch[0] if isinstance(batch, tuple) else batch["image"]
        count, device = count + len(images), str(images.device)
    synchronize(device)
    return count / (time.perf_counter() - started)


def batched_vs_per_sample(data: str, teacher, generator, cache: str, device: str, repeats: int, batch_size: int):
    """The stage's work (GradCAM, mix, preservation check; variants from a warm cache, teacher recomputed) on a
    batch against the same work one sample at a time."""
    with MedDiffuseLoader(data, batch_size, as_dict=True) as loader:
        batch = next(iter(loader))
    # every sample mixed and checked (no originals, no confidence gate with this untrained teacher), results and
    # maps recomputed each call: the work itself, not a cache read
    stage = meddiffusemix_stage(
        teacher,
        generator,
        cache,
        device=device,
        cache_results=False,
        cache_saliency=False,
        original_probability=0.0,
        mix_config=MixConfig(min_confidence=0.0),
    )
    stage(dict(batch))  # fills the variant cache: both timings below read variants from it
    synchronize(device)
    batched, single = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        stage(dict(batch))
        synchronize(device)
        batched.append(batch_size / (time.perf_counter() - started))
        started = time.perf_counter()
        for row in range(batch_size):
            stage(
                {
                    "image": batch["image"][row : row + 1],
                    "label": batch["label"][row : row + 1],
                    "key": batch["key"][row : row + 1],
                }
            )
        synchronize(device)
        single.append(batch_size / (time.perf_counter() - started))
    rate, single_rate = statistics.median(batched), statistics.median(single)
    return {
        "stage_images_per_s_batched": round(rate, 1),
        "stage_images_per_s_per_sample": round(single_rate, 1),
        "ratio_batched_vs_per_sample": round(rate / single_rate, 2),
    }


def warm_vs_cold(
    data: str, teacher, generator, cache: str, device: str, workers: int, repeats: int, batch_size: int
) -> dict[str, float]:
    """An epoch that generates every variant it needs (and fills ``cache``) against epochs that read them all
    (fresh stages, the same draws)."""
    cold_stage = meddiffusemix_stage(teacher, generator, cache, device=device)
    with MedDiffuseLoader(data, batch_size, augment=cold_stage, num_workers=workers) as loader:
        cold = epoch_rate(loader)
    warm_rates = []
    for _ in range(repeats):
        warm_stage = meddiffusemix_stage(teacher, generator, cache, device=device)
        with MedDiffuseLoader(data, batch_size, augment=warm_stage, num_workers=workers) as loader:
            warm_rates.append(epoch_rate(loader))
            assert warm_stage.counters["generator_calls"] == 0, "a warm epoch must not generate"
    warm = statistics.median(warm_rates)
    return {
        "cold_images_per_s": round(cold, 1),
        "warm_images_per_s": round(warm, 1),
        "ratio_warm_vs_cold": round(warm / cold, 2),
    }


def fill_results(data: str, teacher, generator, cache: str, device: str, workers: int, batch_size: int) -> None:
    """One epoch that leaves in ``cache`` the checked result of every sample for variant 0 and mask draw 0: what
    :func:`warm_stage` reads in any epoch (whatever its draws of originals)."""
    stage = meddiffusemix_stage(
        teacher, generator, cache, device=device, variants_per_sample=1, mask_draws=1, original_probability=0.0
    )
    with MedDiffuseLoader(data, batch_size, augment=stage, num_workers=workers) as loader:
        epoch_rate(loader)


def warm_stage(teacher, generator, cache: str, device: str) -> AugmentStage:
    """MedDiffuseMix on a cache :func:`fill_results` filled: every epoch is warm (M = D = 1, so no epoch draws an
    entry the cache lacks; reading a result costs the same whichever of M x D it is)."""
    return meddiffusemix_stage(teacher, generator, cache, device=device, variants_per_sample=1, mask_draws=1)


def with_vs_without_stage(
    data: str, teacher, generator, cache: str, device: str, workers: int, repeats: int, batch_size: int
) -> dict[str, float]:
    """The loader with a warm MedDiffuseMix stage against the loader alone, on the same device, each timed on its
    second epoch (workers started; the stage's results filled first)."""
    fill_results(data, teacher, generator, cache, device, workers, batch_size)
    plain_rates = []
    for _ in range(repeats):
        with MedDiffuseLoader(data, batch_size, num_workers=workers, device=device) as loader:
            epoch_rate(loader)
            plain_rates.append(epoch_rate(loader))
    mixed_rates = []
    for _ in range(repeats):
        stage = warm_stage(teacher, generator, cache, device)
        with MedDiffuseLoader(data, batch_size, augment=stage, num_workers=workers) as loader:
            epoch_rate(loader)
            mixed_rates.append(epoch_rate(loader))
            assert stage.counters["generator_calls"] == 0, "the warm stage generated"
    plain, mixed = statistics.median(plain_rates), statistics.median(mixed_rates)
    return {
        "none_images_per_s": round(plain, 1),
        "meddiffusemix_images_per_s": round(mixed, 1),
        "ratio_meddiffusemix_vs_none": round(mixed / plain, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".bench/augment.json")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher, generator = tiny_models(64)
    results: dict[str, object] = {"device": device, "samples": args.samples, "batch": 64}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = make_demo(scratch, args.samples, 64)
        results.update(batched_vs_per_sample(data, teacher, generator, str(scratch / "c1"), device, args.repeats, 64))
        cache = str(scratch / "variants")
        results.update(warm_vs_cold(data, teacher, generator, cache, device, args.workers, args.repeats, 64))
        results.update(with_vs_without_stage(data, teacher, generator, cache, device, args.workers, args.repeats, 64))
    for name in ("ratio_batched_vs_per_sample", "ratio_warm_vs_cold", "ratio_meddiffusemix_vs_none"):
        print(f"{name:30s} {results[name]}")
    print(json.dumps(results, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
