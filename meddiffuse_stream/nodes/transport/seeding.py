"""Randomness in the workers as a DataLoader gives it, derived from the loader's ``seed=`` instead of the global RNG.

A DataLoader seeds ``torch``, ``random`` and ``numpy`` in each worker process from a base seed and the worker id, and
``torch.utils.data.get_worker_info()`` tells user code (a transform, ``worker_init_fn``) which worker it runs in.
Forked workers that skip this inherit the parent's generator states and draw the same numbers: every augmentation
correlated across workers. Here each worker process seeds the three global generators at the start of each
epoch and again at each batch of a chain that runs user code, from ``(seed, rank, epoch, worker[, batch])``:

- distinct across workers, ranks and epochs; the same ``seed`` gives the same draws;
- a resumed run draws what the uninterrupted run drew from the resumed batch on (the seed is the batch's, not
  the worker stream's), so random augmentations resume exactly too.

:func:`worker_info` gives the worker's id, worker count, seed, epoch, rank and its own generators in every kind
of worker; thread workers (and ``num_workers=0``) share the process's global generators with the training loop,
so those are never reseeded there: draw from ``worker_info().generator`` (``.rng``, ``.random``) for
reproducible, per-worker numbers in any worker.
"""

from __future__ import annotations

import random
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["WorkerInfo", "WorkerSeeds", "batch_seed", "epoch_seed", "worker_info"]

_TAG = 0x5EED  # keeps these streams apart from the plan's (which seeds from (seed, epoch) and friends)
_local = threading.local()


def epoch_seed(seed: int, rank: int, epoch: int, worker: int) -> int:
    """The 63-bit seed of ``worker`` on ``rank`` in ``epoch`` (``get_worker_info().seed``)."""
    state = np.random.SeedSequence((seed, rank, epoch, worker, _TAG)).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def batch_seed(worker_seed: int, batch: int) -> int:
    """The seed the worker's generators get before its ``batch``-th batch of the epoch."""
    state = np.random.SeedSequence((worker_seed, batch, _TAG)).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@dataclass
class WorkerInfo:
    """What user code in a worker can ask: as ``torch.utils.data.get_worker_info()`` (``id``, ``num_workers``,
    ``seed``, ``dataset``) plus ``epoch``, ``rank`` and generators of its own, reseeded with the globals."""

    id: int
    num_workers: int
    seed: int
    dataset: Any
    epoch: int
    rank: int
    generator: Any  # torch.Generator
    rng: np.random.Generator
    random: random.Random


def worker_info() -> WorkerInfo | None:
    """The calling worker's :class:`WorkerInfo`; ``None`` outside the loader's workers (and before its first pass)."""
    return getattr(_local, "info", None)


class WorkerSeeds:
    """One worker's seeding: :meth:`start_epoch` at each command, :meth:`start_batch` before each batch whose
    samples pass through user code. ``own_process``: the globals belong to this worker and are reseeded (with
    ``torch``'s worker info set); otherwise only the worker's own generators are."""

    def __init__(self, worker: int, num_workers: int, own_process: bool) -> None:
        self.worker = worker
        self.num_workers = num_workers
        self.own_process = own_process
        self.info: WorkerInfo | None = None

    def start_epoch(self, seed: int, rank: int, epoch: int, dataset: Any) -> WorkerInfo:
        import torch

        value = epoch_seed(seed, rank, epoch, self.worker)
        generator = self.info.generator if self.info is not None else torch.Generator()
        rng, own_random = np.random.default_rng(value), random.Random()
        self.info = WorkerInfo(self.worker, self.num_workers, value, dataset, epoch, rank, generator, rng, own_random)
        _local.info = self.info
        if self.own_process:
            self._torch_worker_info(torch, value, dataset)
        self._reseed(value)
        return self.info

    def start_batch(self, batch: int) -> None:
        if self.info is not None:
            _local.info = self.info
            self._reseed(batch_seed(self.info.seed, batch))

    def _reseed(self, value: int) -> None:
        info = self.info
        assert info is not None
        info.generator.manual_seed(value)
        info.rng = np.random.default_rng(value)
        info.random.seed(value)
        if self.own_process:  # as DataLoader's worker loop seeds them
            random.seed(value)
            sys.modules["torch"].manual_seed(value)
            np.random.seed(np.random.SeedSequence(value).generate_state(4))

    def _torch_worker_info(self, torch: Any, value: int, dataset: Any) -> None:
        """``torch.utils.data.get_worker_info()`` answers in this process (only ever set in a worker process)."""
        from torch.utils.data._utils import worker as torch_worker

        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=self.worker, num_workers=self.num_workers, seed=value, dataset=dataset
        )
