"""The parts of ``make gpu-check``, each run in a process of its own by ``tools/gpu_check.py``.

Each part takes the run's :class:`Settings`, a work folder shared by the parts (demo data and the warm variant
cache are made once) and ``save``, which it calls with its results so far after every measurement: a part that
times out still leaves what it measured. A part returns its results; ``problems`` in them marks it failed.
The stage measurements are ``tools/bench_augment.py``'s, run on the GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_augment import batched_vs_per_sample, make_demo, tiny_models, warm_vs_cold, with_vs_without_stage
from gpu_train_step import train_step_part as measure_train_step

from meddiffuse_stream import MedDiffuseLoader

__all__ = ["PARTS", "Settings"]

REPO = Path(__file__).resolve().parents[1]
Save = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: the GPU run's, or the dry run's (CPU, tiny, about a minute)."""

    device: str
    sizes: tuple[int, ...]  # demo image sizes for the stage and the training step
    samples: int
    batch: int
    repeats: int
    workers: int
    warmup_steps: int
    timed_steps: int
    model: str  # of the training step and the torchrun smoke
    smoke_size: int
    smoke_samples: int
    smoke_batch: int

    @classmethod
    def for_run(cls, dry_run: bool) -> Settings:
        if dry_run:  # small enough for a loaded 2-core machine
            return cls(
                device="cpu",
                sizes=(16,),
                samples=32,
                batch=8,
                repeats=1,
                workers=1,
                warmup_steps=1,
                timed_steps=2,
                model="cnn",
                smoke_size=16,
                smoke_samples=48,
                smoke_batch=8,
            )
        workers = max(1, min(8, len(os.sched_getaffinity(0)) - 4))  # the rest: main process, stage thread, torchrun
        return cls(
            device="cuda",
            sizes=(64, 224),
            samples=1024,
            batch=64,
            repeats=2,
            workers=workers,
            warmup_steps=5,
            timed_steps=40,
            model="resnet18",
            smoke_size=64,
            smoke_samples=512,
            smoke_batch=32,
        )

    def demo(self, work: Path, size: int) -> str:
        return make_demo(work, self.samples, size, workers=self.workers, shard_size=max(16, self.samples // 8))


# --- the GPU-marked tests ----------------------------------------------------------------------------------------
def tests_part(settings: Settings, work: Path, save: Save, deadline: float) -> dict[str, Any]:
    """``pytest tests/gpu`` (skipped without CUDA): outcome of every test and the figures they measured."""
    report, figures = work / "tests-junit.xml", work / "tests-figures.jsonl"
    for path in (report, figures):
        path.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        "--timeout=150",
    ]
    env = {**os.environ, "MEDDIFFUSE_GPU_FIGURES": str(figures)}
    done = subprocess.run(command, cwd=REPO, env=env, timeout=max(1.0, deadline - time.time()))
    results: dict[str, Any] = {"returncode": done.returncode, **_junit(report)}
    if figures.exists():
        results["figures"] = {k: v for line in figures.read_text().splitlines() for k, v in json.loads(line).items()}
    if done.returncode not in (0, 5) or results.get("failed") or results.get("errors"):  # 5: nothing collected
        results["problems"] = [
            f"{t['name']}: {t['message']}" for t in results.get("tests", []) if t["outcome"] in ("failed", "error")
        ] or [f"pytest exited {done.returncode}"]
    save(results)
    return results


def _junit(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"tests": []}
    root = ElementTree.parse(path).getroot()
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "")[:600]
        cases.append(
            {"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message}
        )
    counts = {key: sum(c["outcome"] == key for c in cases) for key in ("passed", "failed", "skipped")}
    return {**counts, "errors": sum(c["outcome"] == "error" for c in cases), "tests": cases}


# --- the device stage --------------------------------------------------------------------------------------------
def stage_part(settings: Settings, work: Path, save: Save, deadline: float) -> dict[str, Any]:
    """Per image size: batched vs per-sample stage work, a cold epoch (generating every variant) vs warm ones, and
    the loader with the warm stage vs without."""
    results: dict[str, Any] = {}
    for size in settings.sizes:
        entry = results[f"{size}px"] = {
            "samples": settings.samples,
            "batch": settings.batch,
            "workers": settings.workers,
        }
        data = settings.demo(work, size)
        teacher, generator = tiny_models(size)
        common = (data, teacher, generator)
        scratch = work / f"stage-scratch-{size}"
        shutil.rmtree(scratch, ignore_errors=True)
        cache = _variant_cache(work, size, fresh=True)
        entry.update(batched_vs_per_sample(*common, str(scratch), settings.device, settings.repeats, settings.batch))
        save(results)
        entry.update(warm_vs_cold(*common, cache, settings.device, settings.workers, settings.repeats, settings.batch))
        save(results)
        entry.update(
            with_vs_without_stage(*common, cache, settings.device, settings.workers, settings.repeats, settings.batch)
        )
        save(results)
    return results


def _variant_cache(work: Path, size: int, fresh: bool = False) -> str:
    path = work / f"variants-{size}"
    if fresh:
        shutil.rmtree(path, ignore_errors=True)
    return str(path)


# --- the training step -------------------------------------------------------------------------------------------
def train_step_part(settings: Settings, work: Path, save: Save, deadline: float) -> dict[str, Any]:
    """ResNet-18 step time and the share of it spent waiting on the loader (``tools/gpu_train_step.py``)."""
    return measure_train_step(settings, work, save, lambda size: _variant_cache(work, size))


# --- torchrun ----------------------------------------------------------------------------------------------------
def torchrun_part(settings: Settings, work: Path, save: Save, deadline: float) -> dict[str, Any]:
    """``torchrun --nproc_per_node=1 meddiffuse-stream train`` (NCCL on CUDA, gloo in the dry run), SIGKILLed after
    its first checkpoint, then run again with ``--resume`` to the end. ``--augment none``: this is about the process
    group, DDP and resuming; the device stage inside training on CUDA has a test of its own (tests/gpu)."""
    data = make_demo(
        work,
        settings.smoke_samples,
        settings.smoke_size,
        workers=settings.workers,
        shard_size=max(8, settings.smoke_samples // 4),
        val_fraction=0.25,
    )
    out = work / "torchrun"
    shutil.rmtree(out, ignore_errors=True)
    epochs = 2
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "meddiffuse_stream.cli",
        "train",
        data,
        "--out",
        str(out),
        "--model",
        settings.model,
        "--epochs",
        str(epochs),
        "--batch-size",
        str(settings.smoke_batch),
        "--augment",
        "none",
        "--checkpoint-every",
        "2",
        "--workers",
        "2",
        "--device",
        settings.device,
    ]
    with MedDiffuseLoader(data, settings.smoke_batch) as probe:
        expected_steps = epochs * len(probe)
    backend = "nccl" if settings.device == "cuda" else "gloo"
    results: dict[str, Any] = {
        "command": " ".join(command[2:]),
        "expected_steps": expected_steps,
        "expected_backend": backend,
    }
    problems = results["problems"] = []
    log_path = work / "torchrun.log"
    with open(log_path, "w") as log:
        started = time.perf_counter()
        first = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        checkpoint = out / "checkpoint.pt"
        limit = min(deadline, time.time() + 180)
        while first.poll() is None and not checkpoint.exists() and time.time() < limit:
            time.sleep(0.005)
        killed = first.poll() is None
        if killed:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        results["first_run"] = {
            "killed": killed,
            "returncode": first.returncode,
            "seconds": round(time.perf_counter() - started, 2),
        }
        if not checkpoint.exists():
            problems.append(f"the first run wrote no checkpoint (exit {first.returncode}): {_tail(log_path)}")
            save(results)
            return results
        results["killed_at_step"] = torch.load(checkpoint, map_location="cpu", weights_only=True)["step"]
        save(results)
        started = time.perf_counter()
        code = _run_group([*command, "--resume"], log, max(1.0, deadline - time.time()))
        results["resumed_run"] = {"returncode": code, "seconds": round(time.perf_counter() - started, 2)}
    if code != 0:
        problems.append(f"the resumed run exited {code}: {_tail(log_path)}")
    else:
        metrics = json.loads((out / "metrics.json").read_text())
        results.update(
            steps=metrics["steps"],
            distributed=metrics.get("distributed"),
            val_accuracy=metrics.get("val", {}).get("accuracy"),
        )
        if metrics["steps"] != expected_steps:
            problems.append(f"resumed run ended at step {metrics['steps']}, not {expected_steps}")
        ran = metrics.get("distributed") or {}
        device = "cuda:0" if settings.device == "cuda" else "cpu"
        if (ran.get("backend"), ran.get("device")) != (backend, device):
            problems.append(f"trained with {ran}, not a {backend} process group on {device}")
    if not killed:
        problems.append("the first run ended before its first checkpoint could be seen: nothing was resumed")
    save(results)
    return results


def _run_group(command: list[str], log: Any, timeout: float) -> int:
    """Run ``command`` in its own process group; the whole group is killed at ``timeout`` (exit code -9)."""
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return -9


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


PARTS: dict[str, Callable[[Settings, Path, Save, float], dict[str, Any]]] = {
    "tests": tests_part,
    "stage": stage_part,
    "train_step": train_step_part,
    "torchrun": torchrun_part,
}
