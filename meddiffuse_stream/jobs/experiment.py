"""The paper's comparison as an experiment anyone can rerun: methods x seeds x train fractions, from a YAML file.

Writes ``runs/<name>[-f<fraction>]-s<seed>/`` (checkpoint, metrics, ``method.json`` — what ran), evidence metrics
per method and seed (``evidence/``), the generator's fidelity and diversity (``variants.json``), ``results.csv`` (one
row per method, seed, fraction and split: the raw results), ``provenance.json`` (commit, inputs by hash, settings,
wall time),
``results.md`` (mean ± 95 % confidence interval per metric, and paired differences against each baseline) and
``metrics.png`` / ``evidence.png``. A finished run is reused on a re-run only if it ran exactly the configured
method and settings on the same dataset, teacher and generator (compared by content: :func:`provenance`).

On a multi-label dataset the rows carry the macro AUC as ``roc_auc`` (what the tables and paired differences
read), ``macro_ap``, ``micro_auc`` and ``auc:<finding>``, and the evidence metrics per finding
(``roi_unchanged:<finding>``, ...); the report adds a table per finding (:mod:`.experiment_findings`). The
generator and saliency-coverage reports, written for one class label per image, are skipped there.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from .experiment_config import ExperimentConfig, MethodConfig, load_experiment_config
from .experiment_findings import is_multi_label, split_metrics
from .experiment_report import plots, summarise

__all__ = ["METRICS", "check_teacher", "provenance", "run_experiment", "summarise"]

METRICS = ("accuracy", "macro_f1", "roc_auc", "cohen_kappa")


def _stage_for(method: MethodConfig, config: ExperimentConfig, seed: int) -> Any:
    from .stage_factory import build_stage

    return build_stage(
        method.method,
        config.dataset,
        teacher=config.teacher,
        teacher_model=config.teacher_model,
        generator=config.generator,
        variant_cache=config.variant_cache,
        seed=seed,
        settings=method.settings,
        device=config.device,
    )


def check_teacher(config: ExperimentConfig) -> dict[str, Any] | None:
    """The teacher's own metrics (``metrics.json`` beside its checkpoint); refuses one below
    ``min_teacher_val_auc`` with a one-line reason."""
    if not config.teacher:
        return None
    metrics_path = Path(config.teacher).parent / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if config.min_teacher_val_auc is None:
        return metrics
    auc = (metrics or {}).get("val", {}).get("roc_auc")
    if auc is None:
        raise ValueError(
            f"teacher {config.teacher}: no validation AUC in {metrics_path} to check against "
            f"min_teacher_val_auc {config.min_teacher_val_auc}; train it with `meddiffuse-stream train`"
        )
    if auc < config.min_teacher_val_auc:
        raise ValueError(
            f"teacher {config.teacher} has val AUC {auc:.3f} < min_teacher_val_auc "
            f"{config.min_teacher_val_auc}: its saliency would not find the evidence; train it longer"
        )
    return metrics


def _lighter(method: MethodConfig) -> int:
    """Sort key: 0 for methods that run a teacher or read variants (longer runs), 1 for the others."""
    from ..augment.methods import resolve

    spec, _ = resolve(method.method)
    return 0 if spec.needs_saliency or spec.needs_variants else 1


def _run_name(method: MethodConfig, fraction: float, seed: int) -> str:
    return f"{method.name}-s{seed}" if fraction == 1 else f"{method.name}-f{fraction:g}-s{seed}"


def _digest(path: str | None, name: str = "") -> str | None:
    """sha256 (16 hex) of a local file or a dataset's ``name`` file (any URL); None for None."""
    if not path:
        return None
    import hashlib

    from ..storage import Location

    try:
        data = Location(path).read_bytes(name) if name else Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return f"unreadable:{path}"
    return hashlib.sha256(data).hexdigest()[:16]


def _generator_identity(path: str | None) -> str | None:
    if not path:
        return None
    for name in ("meddiffuse_generator.json", "model_index.json"):
        if (Path(path) / name).exists():
            return _digest(str(Path(path) / name))
    return f"missing:{path}"


def provenance(method: MethodConfig, config: ExperimentConfig) -> dict[str, Any]:
    """What a cell's result depends on: the method as run, the dataset, teacher and generator (by content), and
    the training settings. A stored cell is reused only if all of it matches."""
    return {
        **method.describe(),
        "inputs": {
            "dataset": _digest(config.dataset, "dataset.json"),
            "teacher": _digest(config.teacher),
            "generator": _generator_identity(config.generator),
            "training": {
                "model": config.model,
                "epochs": config.epochs,
                "steps": config.steps,
                "loss": config.loss,
                "batch_size": config.batch_size,
                "lr": config.lr,
            },
            "evidence": {"split": config.evidence_split, "batches": config.evidence_batches},
        },
    }


def _finished(run: Path, described: dict[str, Any]) -> bool:
    if not (run / "metrics.json").exists() or not (run / "method.json").exists():
        return False
    return json.loads((run / "method.json").read_text()) == described


def _train(method: MethodConfig, config: ExperimentConfig, seed: int, fraction: float, run: Path) -> None:
    from .train import TrainConfig, train

    stage = _stage_for(method, config, seed)
    described = provenance(method, config)
    started = time.perf_counter()
    train(
        TrainConfig(
            config.dataset,
            str(run),
            model=config.model,
            augment=method.name,
            epochs=config.epochs,
            steps=config.steps,
            batch_size=config.batch_size,
            learning_rate=config.lr,
            seed=seed,
            num_workers=config.workers,
            loss=config.loss,
            augment_stage=stage if stage is not None and not isinstance(stage, str) else None,
            augment_method=stage if isinstance(stage, str) else None,
            device=config.device,
            train_fraction=fraction,
            progress=False,
        )
    )
    described["seconds"] = round(time.perf_counter() - started, 1)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["method"] = described
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (run / "method.json").write_text(json.dumps(provenance(method, config), indent=1) + "\n")


def _evidence_done(method: MethodConfig, config: ExperimentConfig, seed: int, out: Path) -> bool:
    path = out / "evidence" / f"{method.name}-s{seed}.json"
    return path.exists() and json.loads(path.read_text()).get("method") == provenance(method, config)


def _evidence(method: MethodConfig, config: ExperimentConfig, seed: int, teacher: Any, out: Path) -> dict:
    """Evidence metrics of one method and seed on the evidence split (the same for every train fraction)."""
    from .evidence import evidence_metrics

    path = out / "evidence" / f"{method.name}-s{seed}.json"
    described = provenance(method, config)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("method") == described:
            return stored["metrics"]
    stage = _stage_for(method, config, seed)
    saliency = method.settings.saliency_method
    metrics = evidence_metrics(
        config.dataset,
        stage,
        teacher=teacher,
        saliency_method=saliency,
        split=config.evidence_split,
        seed=seed,
        max_batches=config.evidence_batches,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"method": described, "metrics": metrics}, indent=1) + "\n")
    temporary.replace(path)
    return metrics


def _variant_report(config: ExperimentConfig, teacher: Any, out: Path) -> dict[str, Any] | None:
    """The generator alone: label fidelity, distance, diversity and feature distance of its variants (once)."""
    if teacher is None or not (config.generator or config.variant_cache) or is_multi_label(config.dataset):
        return None  # it scores variants by their class label: multi-label variants are conditioned on no finding
    from ..augment.stage import AugmentStage
    from .stage_factory import build_stage
    from .variant_quality import variant_quality

    stage = build_stage(
        "dafusion", config.dataset, generator=config.generator, variant_cache=config.variant_cache, device=config.device
    )
    assert isinstance(stage, AugmentStage), "dafusion with a generator or cache is always a stage"
    identity = stage.variants.identity
    path = out / "variants.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("generator") == identity and "spread" in stored:
            return stored
    report = {
        "generator": identity,
        "variants_per_sample": stage.variants_per_sample,
        "strength": stage.variants.strength,
        "steps": getattr(stage.generator, "steps", None),
        **variant_quality(
            config.dataset, stage, teacher, split=config.evidence_split, max_batches=config.evidence_batches
        ),
    }
    path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _warm_saliency(config: ExperimentConfig, work: list[tuple[MethodConfig, float, int, bool]]) -> int:
    """The teacher's maps of the train split, extracted once into the variant cache before the cells start, per
    saliency setting the cells to run use: without it every saliency method's first runs (two at a time with
    ``jobs: 2``) would each extract them on their first epoch. Returns the number of maps made."""
    from ..augment.methods import resolve
    from ..augment.stage import AugmentStage
    from ..loader import MedDiffuseLoader

    if not (config.teacher and config.variant_cache):
        return 0
    warmed: set[tuple[str, int]] = set()
    made = 0
    for method, _, seed, _ in work:
        spec, _ = resolve(method.method)
        settings = method.settings
        setting = (settings.saliency_method, settings.saliency_layer)
        if not spec.needs_saliency or settings.cache_saliency is False or setting in warmed:
            continue
        warmed.add(setting)
        stage = _stage_for(method, config, seed)
        if not isinstance(stage, AugmentStage) or stage.saliency is None or stage.saliency.cache is None:
            continue
        with MedDiffuseLoader(config.dataset, 64, split="train", as_dict=True, shuffle=False) as loader:
            made += sum(stage.warm_saliency(batch) for batch in loader)
    return made


def _saliency_report(config: ExperimentConfig, teacher: Any, out: Path) -> dict[str, Any] | None:
    """How much of each lesion each saliency method's mask covers, with the experiment's teacher (once)."""
    from ..augment.saliency import model_identity
    from ..nodes.source import open_dataset
    from .evidence import saliency_coverage

    if teacher is None or not config.saliency_methods or is_multi_label(config.dataset):
        return None  # coverage of one class's map; per-finding ROI metrics are in the evidence instead
    if not open_dataset(config.dataset, config.evidence_split).has_roi:
        return None
    identity = model_identity(teacher)
    path = out / "saliency.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("teacher") == identity and list(stored["methods"]) == list(config.saliency_methods):
            return stored
    report = {
        "teacher": identity,
        "methods": saliency_coverage(config.dataset, teacher, config.saliency_methods, split=config.evidence_split),
    }
    path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _cell(
    config: ExperimentConfig, method: MethodConfig, fraction: float, seed: int, evidence: bool, threads: int = 0
) -> str:
    """Train one cell if it has not run as configured, and measure the method's evidence if asked (runs in a
    worker process with ``jobs`` > 1: everything it needs is read from disk)."""
    import torch

    from .stage_factory import load_teacher

    if threads:
        torch.set_num_threads(threads)
    out = Path(config.out)
    run = out / "runs" / _run_name(method, fraction, seed)
    if not _finished(run, provenance(method, config)):
        _train(method, config, seed, fraction, run)
    if evidence:
        teacher = load_teacher(config.dataset, config.teacher, config.teacher_model) if config.teacher else None
        _evidence(method, config, seed, teacher, out)
    return run.name


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """In each cell worker: exit once the experiment's process is gone (killed by a signal only it received), so
    no worker trains on, unseen, into the output folder of a run that has ended."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_cells(config: ExperimentConfig, work: list[tuple[MethodConfig, float, int, bool]], progress: bool) -> None:
    """Sequentially, or ``jobs`` at a time in spawned processes with the cores shared out between them."""
    if config.jobs == 1:
        for number, (method, fraction, seed, evidence) in enumerate(work, 1):
            if progress:
                print(f"[{number}/{len(work)}] {_run_name(method, fraction, seed)}", flush=True)
            _cell(config, method, fraction, seed, evidence)
        return
    import multiprocessing
    import os
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    threads = max(1, len(os.sched_getaffinity(0)) // config.jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        config.jobs, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        futures = {pool.submit(_cell, config, m, f, s, e, threads): _run_name(m, f, s) for m, f, s, e in work}
        pending, finished = set(futures), 0
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise RuntimeError(f"experiment cell {futures[future]} failed: {error}") from error
                finished += 1
                if progress:
                    print(f"[{finished}/{len(work)}] {futures[future]} done", flush=True)


def run_experiment(config_path: str | Path, *, progress: bool = True) -> Path:
    from .stage_factory import load_teacher

    config = load_experiment_config(config_path)
    check_teacher(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(config.dataset, config.teacher, config.teacher_model) if config.teacher else None
    started = time.perf_counter()
    variants = _variant_report(config, teacher, out)
    saliency = _saliency_report(config, teacher, out)
    cells = [(m, f, s) for f in config.fractions for m in config.methods for s in config.seeds]
    measured = config.fractions[-1]  # evidence does not depend on the train fraction: one cell per method/seed
    # seeds outermost: a method's first run fills the caches its other seeds read (MedDiffuseMix's checked
    # results), rather than two runs of one method filling them side by side with ``jobs: 2``; within a round the
    # methods with a teacher or variants (the longer runs) first, so the round ends on short ones
    heavier_first = sorted(config.methods, key=_lighter)
    by_seed = [(m, f, s) for s in config.seeds for f in config.fractions for m in heavier_first]
    work = [
        (m, f, s, f == measured)
        for m, f, s in by_seed
        if not _finished(out / "runs" / _run_name(m, f, s), provenance(m, config))
        or (f == measured and not _evidence_done(m, config, s, out))
    ]
    maps = _warm_saliency(config, work)
    if progress and maps:
        print(f"teacher saliency: {maps} maps cached for the runs to share", flush=True)
    _run_cells(config, work, progress)
    rows = []
    for method, fraction, seed in cells:
        run = out / "runs" / _run_name(method, fraction, seed)
        evidence = json.loads((out / "evidence" / f"{method.name}-s{seed}.json").read_text())["metrics"]
        metrics = json.loads((run / "metrics.json").read_text())
        for split in config.report_splits:
            if split in metrics:
                rows.append(
                    {
                        "method": method.name,
                        "seed": seed,
                        "fraction": fraction,
                        "split": split,
                        "steps": metrics["steps"],
                        "final_loss": metrics.get("final_loss"),
                        **split_metrics(metrics[split], METRICS),
                        **{k: v for k, v in evidence.items() if not isinstance(v, dict)},
                    }
                )
    if not rows:
        raise ValueError(f"{config_path}: no run reported any of the splits {list(config.report_splits)}")
    with open(out / "results.csv", "w", newline="") as stream:
        # every row's columns (a method that changed no image has no per-finding evidence columns)
        writer = csv.DictWriter(stream, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(summarise(rows, variants, saliency))
    plots(rows, out, variants)
    timing = {
        "seconds": round(time.perf_counter() - started, 1),
        "runs": len(cells),
        "cells_run_now": len(work),
        "jobs": config.jobs,
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    from .experiment_provenance import write_provenance

    generator = {"identity": variants.get("generator")} if variants else {}
    write_provenance(
        out, config_path, config, [provenance(m, config) for m in config.methods], {"timing": timing, **generator}
    )
    return out
