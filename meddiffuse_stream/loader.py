"""``MedDiffuseLoader``: a drop-in DataLoader over shard datasets, exactly once per epoch, resumable mid-epoch.

Guarantees (see :mod:`meddiffuse_stream.nodes.plan` for how):

- every rank yields the same number of batches per epoch, so DDP never waits on a rank that ran dry;
- across ranks and workers every sample appears once per epoch, except that without ``drop_last`` up to
  ``world_size - 1`` samples repeat so the ranks come out equal (``with drop_last`` as many are dropped);
- the same seed gives the same batches; another epoch another order;
- a loader restored from ``state_dict()`` taken after k batches yields exactly what the uninterrupted one yields
  after k (the same ``num_workers`` is required: the order depends on it, as with a DataLoader).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .counters import Counters
from .nodes.chunks import StageConfig
from .nodes.collate import to_unit_float
from .nodes.decode import DecodeOptions, check_member_keys
from .nodes.plan import EpochPlan
from .nodes.source import open_dataset
from .nodes.workers import WorkerPool
from .retry import RetryPolicy

__all__ = ["MedDiffuseLoader", "sample_shape"]

STATE_VERSION = 1
_SETTINGS = ("seed", "rank", "world_size", "num_workers", "batch_size", "shuffle", "drop_last", "buffer_size")


def _distributed_default(name: str, fallback: int) -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() if name == "RANK" else torch.distributed.get_world_size()
    return int(os.environ.get(name, fallback))


class MedDiffuseLoader:
    """Stream ``source`` in batches: a dataset folder (local or any fsspec URL), a folder or prefix of WebDataset
    ``.tar`` shards, a glob or brace pattern of them, a list of their URLs, or a shard index (``…/x.json``).

    ``for images, labels in loader`` gives float32 ``(B, C, H, W)`` in [0, 1] and int64 labels; with
    ``as_dict=True`` dicts with ``image``, ``label``, ``key`` and, where the dataset has them, ``roi`` and ``meta``.
    """

    def __init__(
        self,
        source: str | Sequence[str],
        batch_size: int,
        *,
        split: str | None = None,
        num_workers: int = 0,
        shuffle: bool | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        augment: Any = None,
        device: str | torch.device | None = None,
        as_dict: bool = False,
        cache_dir: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: str = "raise",
        worker_method: str = "process",
        buffer_size: int = 1000,
        prefetch: int = 2,
        retry: RetryPolicy | None = None,
        cache_bytes: int = 50 << 30,
        mp_context: str = "fork",
        image_key: str | None = None,
        label_key: str | None = None,
    ) -> None:
        check_member_keys(image_key, label_key)
        self.counters = Counters()
        policy = retry or RetryPolicy()
        self.dataset = open_dataset(source, split, storage_options, retry=policy,
                                    on_retry=lambda _: self.counters.add("retries"))  # fmt: skip
        self.source = source
        self.split = self.dataset.split
        self.as_dict = as_dict
        self.device = torch.device(device) if device is not None else None
        plan = EpochPlan(
            shard_sizes=tuple(s.samples for s in self.dataset.shards),
            batch_size=batch_size,
            seed=seed,
            rank=_distributed_default("RANK", 0) if rank is None else rank,
            world_size=_distributed_default("WORLD_SIZE", 1) if world_size is None else world_size,
            num_workers=num_workers,
            shuffle=self.split in (None, "train") if shuffle is None else shuffle,
            drop_last=drop_last,
            buffer_size=buffer_size,
        )
        decode = DecodeOptions(num_classes=len(self.dataset.class_names) or None, with_roi=as_dict, with_meta=as_dict,
                               image_key=image_key, label_key=label_key, class_names=self.dataset.class_names)
        config = StageConfig(self.dataset, plan, decode, on_error, transform, policy, cache_dir, cache_bytes)
        self._pool = WorkerPool(config, method=worker_method, prefetch=prefetch, mp_context=mp_context,
                                counters=self.counters)  # fmt: skip
        self.augment = self._build_stage(augment, seed)
        # on the CPU the stage runs with the cores the decode workers leave (None: torch's own setting)
        self._stage_threads = max(1, len(os.sched_getaffinity(0)) - num_workers) if num_workers > 0 else None
        self._augment_state = self.augment.state_dict() if self.augment is not None else None
        self._epoch = 0
        self._batches = 0
        self._epoch_set = False
        self._pool.read_ahead(self._epoch)  # workers start now: their start-up overlaps the caller's model set-up

    # --- the DataLoader surface -------------------------------------------------------------------------
    @property
    def plan(self) -> EpochPlan:
        return self._pool.plan(self._epoch)

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return self.plan.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration (as ``DistributedSampler.set_epoch``)."""
        self._epoch, self._batches, self._epoch_set = int(epoch), 0, True

    def __iter__(self) -> Iterator[Any]:
        if self._batches >= len(self) and not self._epoch_set:
            self._epoch, self._batches = self._epoch + 1, 0  # the last epoch ended: go on to the next
        self._epoch_set = False
        self._pool.reset({WorkerPool.EPOCH_KEY: self._epoch, WorkerPool.BATCHES_KEY: self._batches})
        padded = self.plan.padded_count()
        if self._batches == 0 and padded:
            self.counters["padded_for_ranks"] += padded
        if self.augment is None:
            for chunk in self._pool:
                self._batches += 1
                yield self._to_torch(chunk)
            return
        from .augment.runner import run_stage

        batches = (self._to_torch(chunk, keep_on_host=True) for chunk in self._pool)
        # saliency and variant planes only when someone will see them (as_dict)
        for batch, state in run_stage(self.augment, batches, details=self.as_dict, cpu_threads=self._stage_threads):
            self._batches += 1
            self._augment_state = state
            yield batch if self.as_dict else (batch["image"], batch["target"])

    def close(self) -> None:
        """Stop worker processes now (they also stop when the loader is garbage-collected)."""
        self._pool.close()

    def __enter__(self) -> MedDiffuseLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state ----------------------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        text = "|".join(f"{s.path}:{s.samples}:{s.sha256}" for s in self.dataset.shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: epoch, batches yielded in it, the settings the order depends on, counters."""
        plan = self.plan
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "batches": self._batches,
            "split": self.split,
            "dataset": self._fingerprint(),
            "settings": {name: getattr(plan, name) for name in _SETTINGS},
            "counters": self.counters.as_dict(),
            "augment": self._augment_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where ``state`` was taken; refuses a state from another dataset or other ordering settings."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        if state["dataset"] != self._fingerprint() or state["split"] != self.split:
            raise ValueError(
                f"this loader state belongs to another dataset or split ({state['split']!r}); "
                f"it cannot resume {self.source!r} split {self.split!r}"
            )
        plan = self.plan
        different = {k: (v, getattr(plan, k)) for k, v in state["settings"].items() if getattr(plan, k) != v}
        if different:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in different.items())
            raise ValueError(f"cannot resume exactly with other settings ({detail}); construct the loader as saved")
        self._epoch, self._batches, self._epoch_set = int(state["epoch"]), int(state["batches"]), True
        self.counters.clear()
        self.counters.update(state.get("counters", {}))
        if self.augment is not None:
            if state.get("augment") is None:
                raise ValueError("this loader state was saved without augment=; construct the loader as saved")
            self.augment.load_state_dict(state["augment"])
            self._augment_state = state["augment"]

    # --- batches --------------------------------------------------------------------------------------------
    def _build_stage(self, augment: Any, seed: int) -> Any:
        """``None``, a method name that needs no models, or a configured ``AugmentStage``."""
        if augment is None:
            return None
        from .augment import AugmentStage

        if isinstance(augment, AugmentStage):
            return augment
        if not isinstance(augment, str):
            raise TypeError(f"augment must be None, a method name or an AugmentStage, got {type(augment).__name__}")
        try:
            return AugmentStage(augment, len(self.dataset.class_names) or 2, seed=seed, device=self.device)
        except ValueError as error:
            raise ValueError(f"{error}; build it with meddiffuse_stream.augment.AugmentStage(...)") from error

    def _to_torch(self, chunk: dict[str, Any], keep_on_host: bool = False) -> Any:
        image = chunk["image"]
        # numpy, not torch, converts: torch's intra-op threads would spin on the cores the decode workers need
        if not isinstance(image, np.ndarray):  # a user transform produced tensors
            tensor = image.to(torch.float32)
        else:
            tensor = torch.from_numpy(to_unit_float(image))
        batch: dict[str, Any] = {"image": tensor, "label": torch.from_numpy(chunk["label"]), "key": chunk["key"]}
        if "roi" in chunk:
            batch["roi"] = torch.from_numpy(chunk["roi"].astype(np.float32))
        if "meta" in chunk:
            batch["meta"] = chunk["meta"]
        if keep_on_host:  # the device stage makes the copy, on its own stream
            return batch
        if self.device is not None and self.device.type != "cpu":
            batch = {k: _to_device(v, self.device) for k, v in batch.items()}
        return batch if self.as_dict else (batch["image"], batch["label"])


def _to_device(value: Any, device: torch.device) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if device.type == "cuda":
        value = value.pin_memory()  # page-locked, so the copy below runs asynchronously
    return value.to(device, non_blocking=True)


def sample_shape(source: str | Sequence[str], storage_options: Mapping[str, Any] | None = None) -> tuple[int, int, int]:
    """``(channels, image size, classes)`` of a dataset, from its first sample: what a model for it must take."""
    probe = MedDiffuseLoader(source, 1, shuffle=False, storage_options=storage_options)
    try:
        images, _ = next(iter(probe))
    finally:
        probe.close()
    return images.shape[1], images.shape[-1], len(probe.dataset.class_names)
