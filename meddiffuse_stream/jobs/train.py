"""Training a classifier on shards: alone or under torchrun (gloo on CPU, NCCL on CUDA), resumable exactly.

A checkpoint holds the model, optimizer, scheduler, AMP scaler, step and the loader's state (which includes the
augmentation stage's), written atomically by rank 0 and read back with ``torch.load(weights_only=True)``; a run
resumed from it sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..loader import MedDiffuseLoader, sample_shape
from ..models import build_model
from ..nodes.to_torch import unit_float
from ..options import Dtype
from ..shardfmt.manifest import DATASET_JSON, Manifest, read_manifest
from ..storage import DEFAULT_CACHE_BYTES, Location
from .objective import Objective, check_trainable, objective_for

__all__ = [
    "TargetNotReachedError",
    "TrainConfig",
    "process_group_timeout",
    "require_classes",
    "train",
    "training_device",
]

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    dataset: str
    out: str
    model: str = "cnn"
    augment: str = "standard"
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "ce"  # ce, weighted (inverse class frequency)
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 0  # steps; a checkpoint is also written at every epoch end
    resume: bool = False
    device: str | None = None
    amp: bool = True  # on CUDA only
    deterministic: bool = False  # deterministic kernels (process-wide): bit-exact resume on CUDA too
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    key_log: bool = False  # write the keys each rank trained on (for audits and tests)
    train_fraction: float = 1.0  # < 1: train on this patient-level fraction of the train split
    augment_stage: Any = None  # a configured AugmentStage overrides ``augment``
    augment_method: str | None = None  # a model-free method to run when ``augment`` is only a label (experiments)
    min_val_auc: float | None = None  # fail (after writing metrics) when the val AUC ends below this
    progress: bool = True
    steps: int | None = None  # optimizer steps to make, whatever the epoch length (overrides ``epochs``)
    cache_dir: str | None = None  # local shard cache for remote datasets (LRU, sha256-verified)
    cache_bytes: int = DEFAULT_CACHE_BYTES
    loader_dtype: Dtype = "float32"  # uint8/uint16: the loader delivers stored integers, converted on the device
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for every location opened


def training_device(name: str | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` where CUDA is present (also for a plain ``--device cuda``: each torchrun process takes
    its own GPU), else the CPU; an explicit ``cuda:N`` or ``cpu`` as given."""
    if name in (None, "cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if name == "cuda":
            raise ValueError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
        return torch.device("cpu")
    return torch.device(name)


def process_group_timeout() -> timedelta | None:
    """How long a collective waits for its peers before it fails, from ``MEDDIFFUSE_DDP_TIMEOUT`` (seconds): a rank
    whose peer died then fails (and torchrun restarts the ranks) instead of blocking for torch's default (30 minutes
    for gloo). ``None`` when unset or empty: torch's default."""
    text = os.environ.get("MEDDIFFUSE_DDP_TIMEOUT", "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"MEDDIFFUSE_DDP_TIMEOUT={text!r}: give the process-group timeout as seconds > 0")
    return timedelta(seconds=seconds)


def _distributed(device: torch.device) -> tuple[int, int, bool]:
    """Under torchrun a process group always exists, one process included (so a 1-GPU run goes through NCCL and
    DDP as a cluster run does): NCCL when training on CUDA, gloo on the CPU whatever the machine has."""
    launched = "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL starts: otherwise every rank's collectives use cuda:0
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=process_group_timeout())
        return dist.get_rank(), dist.get_world_size(), True
    return (dist.get_rank(), dist.get_world_size(), False) if dist.is_initialized() else (0, 1, False)


def _make_deterministic() -> None:
    """Deterministic kernels for the whole process (cuDNN, cuBLAS, scatter-style ops raise if they have none)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS makes its first handle
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def _class_weights(loader: MedDiffuseLoader) -> torch.Tensor:
    if loader.dataset.class_counts is None:
        raise ValueError(f"--loss weighted needs the class counts a dataset.json records; {loader.source!r} has none")
    counts = np.array(loader.dataset.class_counts, dtype=np.float64)
    weights = counts.sum() / np.maximum(counts, 1) / len(counts)
    return torch.as_tensor(weights, dtype=torch.float32)


def _manifest(dataset: str, storage_options: Mapping[str, Any] | None = None) -> Manifest | None:
    """The validated ``dataset.json`` (a bad one is an error naming the field); ``None`` for plain shards."""
    try:
        return read_manifest(Location(dataset, storage_options))
    except FileNotFoundError:
        return None  # shards without dataset.json: multi-class, and the loader names what is missing


def require_classes(
    dataset: str, augment: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> Manifest | None:
    """A classifier needs classes to tell apart (two classes, or a finding with positives and negatives); say so
    before anything starts. Returns the dataset's manifest, where it has one."""
    manifest = _manifest(dataset, storage_options)
    if manifest is not None:
        check_trainable(manifest, dataset, augment)
    return manifest


def _objective(manifest: Manifest | None, config: TrainConfig, loader: MedDiffuseLoader, device) -> Objective:
    if manifest is not None:
        return objective_for(manifest, config.loss, config.dataset, device)
    weight = _class_weights(loader).to(device) if config.loss == "weighted" else None
    return Objective("multi_class", tuple(loader.dataset.class_names), weight)


def train(config: TrainConfig) -> dict[str, Any]:
    requested = "stage" if config.augment_stage is not None else config.augment_method or config.augment
    manifest = require_classes(config.dataset, requested, config.storage_options)
    if config.deterministic:
        _make_deterministic()
    device = training_device(config.device)
    cuda = device.type == "cuda"
    rank, world, initialised_here = _distributed(device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.train_fraction < 1:
        config = _with_subset(config, out, rank, world)
    channels, size, classes = sample_shape(config.dataset, config.storage_options)
    method = config.augment_method or config.augment
    augment = config.augment_stage or (None if method == "none" else method)
    loader = MedDiffuseLoader(
        config.dataset,
        config.batch_size,
        num_workers=config.num_workers,
        seed=config.seed,
        augment=augment,
        as_dict=True,
        rank=rank,
        world_size=world,
        cache_dir=config.cache_dir,
        cache_bytes=config.cache_bytes,
        device=device,
        dtype=config.loader_dtype,
        storage_options=config.storage_options,
    )
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build_model(config.model, channels, classes, size).to(device)
    if dist.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.steps is not None:  # a step budget: as many epochs as it takes (the last one cut short)
        config = replace(config, epochs=max(1, math.ceil(config.steps / max(1, len(loader)))))
    total_steps = max(1, config.steps if config.steps is not None else config.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and config.amp)
    objective = _objective(manifest, config, loader, device)
    step = 0
    state: dict[str, Any] = {}
    if config.resume and (out / CHECKPOINT).exists():
        state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if "teacher" in state and loader.augment is not None:  # a refreshed teacher is part of the run's state
            loader.augment.update_teacher(state["teacher"])
        loader.load_state_dict(state["loader"][rank])
        step = int(state["step"])
    keys = _open_key_log(out / f"keys-rank{rank}.txt", state.get("key_log_bytes"), rank) if config.key_log else None
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc=f"train {config.model}/{config.augment}",
        unit="step",
        disable=rank != 0 or not config.progress,
    )
    recent: deque[torch.Tensor] = deque(maxlen=10)  # kept on the device: no host sync per step
    try:
        while loader.epoch < config.epochs and step < total_steps:
            for batch in loader:
                images = unit_float(batch["image"].to(device, non_blocking=True))  # uint8/uint16 on the device
                with torch.autocast(device.type, enabled=cuda and config.amp):
                    loss = objective.loss(model(images), batch, device)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                recent.append(loss.detach())
                bar.update(1)
                if keys is not None:
                    keys.write("".join(f"{loader.epoch} {k}\n" for k in batch["key"]))
                    keys.flush()
                if loader.augment is not None and loader.augment.teacher is not None:
                    loader.augment.maybe_refresh_teacher(_unwrap(model), step)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    _checkpoint(out, model, optimizer, scheduler, scaler, loader, step, rank, world, keys)
                if step >= total_steps:  # a step budget ends inside an epoch (every rank at the same step)
                    break
            _checkpoint(out, model, optimizer, scheduler, scaler, loader, step, rank, world, keys)
            if loader.epoch + 1 >= config.epochs:
                break
            loader.set_epoch(loader.epoch + 1)
    finally:
        bar.close()
        if keys is not None:
            keys.close()
        loader.close()
    # the fields one by one: asdict() would deep-copy the device stage (its models, caches and lock) only to drop it
    settings = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "augment_stage"}
    results = {
        "config": settings,
        "steps": step,
        "final_loss": float(torch.stack(list(recent)).double().mean()) if recent else None,
        "counters": _summed_counters(loader, world),
        "distributed": {
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "world_size": world,
            "device": str(device),
        },
    }
    for split in config.eval_splits:
        metrics = evaluate(
            _unwrap(model),
            config.dataset,
            split,
            config.batch_size,
            device,
            rank,
            world,
            objective,
            storage_options=config.storage_options,
        )
        if metrics is not None:
            results[split] = metrics
    if config.key_log:  # what each rank ended with: under DDP every rank must hold the same parameters
        digest = hashlib.sha256()  # (BatchNorm running statistics are per rank; DDP broadcasts rank 0's each step)
        for tensor in _unwrap(model).parameters():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        (out / f"rank{rank}.json").write_text(json.dumps({"param_sha256": digest.hexdigest(), "steps": step}))
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    if initialised_here:
        # every rank arrives, the DDP wrapper (its reducer holds the process group) goes first, then the group:
        # tearing down out of that order hung a rank now and then at exit (1 run in ~7 with shards on S3)
        dist.barrier()
        del model, optimizer, scheduler
        dist.destroy_process_group()
    _check_target(config, results)
    return results


class TargetNotReachedError(ValueError):
    """Training finished below ``min_val_auc``: the model is saved, but is not good enough for its purpose."""


def _check_target(config: TrainConfig, results: dict[str, Any]) -> None:
    if config.min_val_auc is None:
        return
    auc = results.get("val", {}).get("roc_auc")
    if auc is None or auc < config.min_val_auc:
        shown = "no val split" if auc is None else f"val AUC {auc:.3f}"
        raise TargetNotReachedError(
            f"{config.out}: {shown} after {results['steps']} steps is below --min-val-auc {config.min_val_auc}; "
            "train longer (--epochs), with another --lr, or a larger model"
        )


def _summed_counters(loader: MedDiffuseLoader, world: int) -> dict[str, dict[str, int]]:
    """The loader's and the device stage's counters, summed over ranks (so a cluster run reports one total)."""
    local = {
        "loader": loader.counters.as_dict(),
        "augment": loader.augment.counters.as_dict() if loader.augment is not None else {},
    }
    totals: dict[str, dict[str, int]] = {name: {} for name in local}
    for part in _gather(local, world):
        for name, counts in part.items():
            for key, value in counts.items():
                totals[name][key] = totals[name].get(key, 0) + value
    return totals


def _gather(local: Any, world: int) -> list[Any]:
    """Every rank's ``local`` (picklable), in rank order, on every rank."""
    if world == 1:
        return [local]
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    return parts


def _with_subset(config: TrainConfig, out: Path, rank: int, world: int) -> TrainConfig:
    """Train on a patient-level fraction: rank 0 writes the subset dataset once, the others wait for it."""
    from .subset import subset_dataset

    subset = out / f"train-subset-f{config.train_fraction:g}-s{config.seed}"
    if rank == 0 and not (subset / DATASET_JSON).exists():
        subset_dataset(
            config.dataset, str(subset), config.train_fraction, config.seed, storage_options=config.storage_options
        )
    if world > 1:
        dist.barrier()
    return replace(config, dataset=str(subset))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, torch.nn.Module) else model


def _open_key_log(path: Path, checkpointed_bytes: list[int] | None, rank: int) -> Any:
    """The key log, cut back to what it held at the checkpoint being resumed: keys trained after that checkpoint
    by a run that was then killed are trained again, so they must not be listed twice."""
    if checkpointed_bytes is None:
        return open(path, "w")
    handle = open(path, "a" if path.exists() else "w")
    handle.truncate(checkpointed_bytes[rank])
    handle.seek(checkpointed_bytes[rank])
    return handle


def _checkpoint(out, model, optimizer, scheduler, scaler, loader, step, rank, world, keys=None) -> None:
    """Rank 0 writes one file holding every rank's loader state and key-log length (gathered), atomically."""
    parts = _gather((loader.state_dict(), keys.tell() if keys is not None else 0), world)
    if rank != 0:
        return
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "loader": [part[0] for part in parts],
        "step": step,
    }
    if keys is not None:
        state["key_log_bytes"] = [part[1] for part in parts]
    stage = loader.augment
    if stage is not None and stage.teacher is not None and stage.refresh_every > 0:
        state["teacher"] = stage.teacher_state()
    temporary = out / f".{CHECKPOINT}.tmp"
    torch.save(state, temporary)
    os.replace(temporary, out / CHECKPOINT)


@torch.no_grad()
def evaluate(
    model,
    dataset: str,
    split: str,
    batch_size: int,
    device,
    rank: int,
    world: int,
    objective: Objective | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> dict | None:
    """Metrics on ``split`` (None if the dataset has no such split); ranks share the work, padding removed."""
    try:
        loader = MedDiffuseLoader(
            dataset,
            batch_size,
            split=split,
            shuffle=False,
            as_dict=True,
            rank=rank,
            world_size=world,
            device=device,
            storage_options=storage_options,
        )
    except ValueError:
        return None
    objective = objective or Objective("multi_class", tuple(loader.dataset.class_names))
    model.eval()
    rows: dict[str, Any] = {}
    for batch in loader:
        rows.update(objective.rows(batch, objective.scores(model(unit_float(batch["image"].to(device))))))
    loader.close()
    model.train()
    rows = {k: v for part in _gather(rows, world) for k, v in part.items()}  # duplicates (rank padding) collapse
    return objective.metrics(rows)
