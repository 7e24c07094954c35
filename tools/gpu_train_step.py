"""The training-step part of ``make gpu-check``: how long a ResNet-18 step takes, and how much of it is waiting.

A step is the one ``meddiffuse-stream train`` takes (autocast and GradScaler on CUDA, AdamW). It is timed first on
a batch already on the device (compute only), then fed by ``MedDiffuseLoader`` with ``augment=None``, ``standard``
and warm MedDiffuseMix. ``loader_wait_fraction`` = 1 − compute-only step time / fed step time: the share of a
step the trainer spends waiting on its input (goal < 0.10 with MedDiffuseMix). ``blocked_in_next_fraction`` is
the time spent inside ``next(loader)``, the same wait as the training loop sees it (GradScaler synchronises every
step, so the GPU idles while the loop waits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_augment import fill_results, synchronize, tiny_models, warm_stage

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.models import build_model

__all__ = ["WAIT_GOAL", "train_step_part"]

WAIT_GOAL = 0.10


def train_step_part(
    settings: Any,
    work: Path,
    save: Callable[[dict], None],
    variant_cache: Callable[[int], str],
) -> dict[str, Any]:
    """Per image size: compute-only step time, then step time and wait fraction for each augmentation."""
    device = torch.device(settings.device)
    results: dict[str, Any] = {}
    for size in settings.sizes:
        entry = results[f"{size}px"] = {
            "model": settings.model,
            "batch": settings.batch,
            "amp": device.type == "cuda",
            "workers": settings.workers,
            "timed_steps": settings.timed_steps,
        }
        data = settings.demo(work, size)
        teacher, generator = tiny_models(size)
        cache = variant_cache(size)
        started = time.perf_counter()
        fill_results(data, teacher, generator, cache, settings.device, settings.workers, settings.batch)
        entry["cache_warming_s"] = round(time.perf_counter() - started, 2)
        trainer = _Trainer(device, size, settings.model)
        compute_ms = entry["compute_only_step_ms"] = trainer.compute_only_ms(settings)
        save(results)
        warm = warm_stage(teacher, generator, cache, settings.device)
        for name, augment in (("none", None), ("standard", "standard"), ("meddiffusemix", warm)):
            with MedDiffuseLoader(
                data, settings.batch, num_workers=settings.workers, augment=augment, device=device, seed=0
            ) as loader:
                entry[name] = trainer.fed_by(loader, settings, compute_ms)
            save(results)
        entry["meddiffusemix"].update(
            generator_calls=warm.counters["generator_calls"],
            variants_per_sample=1,
            mask_draws=1,
            original_probability=warm.original_probability,
        )
        waited = entry["meddiffusemix"]["loader_wait_fraction"]
        entry["meddiffusemix_wait_goal_met"] = waited < WAIT_GOAL
        if waited >= WAIT_GOAL and device.type == "cuda":
            results.setdefault("problems", []).append(
                f"{size}px: the trainer waits on the loader {waited:.0%} of a step with MedDiffuseMix (goal < 10 %)"
            )
        save(results)
    return results


def _endless(loader: MedDiffuseLoader) -> Iterator[Any]:
    while True:  # iterating again moves the loader on to its next epoch
        yield from loader


class _Trainer:
    """A model (ResNet-18 on the GPU, the small CNN in the dry run) and the step ``train`` takes."""

    def __init__(self, device: torch.device, size: int, model: str) -> None:
        torch.manual_seed(0)
        self.device, self.size = device, size
        self.amp = device.type == "cuda"
        self.model = build_model(model, 1, 2, size).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.autocast(self.device.type, enabled=self.amp):
            loss = F.cross_entropy(self.model(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def compute_only_ms(self, settings: Any) -> float:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(settings.batch, 1, self.size, self.size, generator=generator).to(self.device)
        targets = torch.randint(0, 2, (settings.batch,), generator=generator).to(self.device)
        for _ in range(settings.warmup_steps):
            self.step(images, targets)
        synchronize(str(self.device))
        started = time.perf_counter()
        for _ in range(settings.timed_steps):
            self.step(images, targets)
        synchronize(str(self.device))
        return round((time.perf_counter() - started) / settings.timed_steps * 1000, 3)

    def fed_by(self, loader: MedDiffuseLoader, settings: Any, compute_ms: float) -> dict[str, float]:
        batches = _endless(loader)
        try:
            for _ in range(settings.warmup_steps):
                self.step(*next(batches))
            synchronize(str(self.device))
            blocked, started = 0.0, time.perf_counter()
            for _ in range(settings.timed_steps):
                asked = time.perf_counter()
                images, targets = next(batches)
                blocked += time.perf_counter() - asked
                self.step(images, targets)
            synchronize(str(self.device))
            wall = time.perf_counter() - started
        finally:
            batches.close()  # stops the stage's thread while the loader's workers still run
        step_ms = wall / settings.timed_steps * 1000
        return {
            "step_ms": round(step_ms, 3),
            "images_per_s": round(settings.timed_steps * settings.batch / wall, 1),
            "loader_wait_fraction": round(max(0.0, 1 - compute_ms / step_ms), 4),
            "blocked_in_next_fraction": round(blocked / wall, 4),
        }
