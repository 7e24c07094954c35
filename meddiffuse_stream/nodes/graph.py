"""The default graph ``MedDiffuseLoader`` builds, from the public nodes:

``EpochSource → Workers(WorkerChain: ReadSamples → DecodeBatch) → ToTorch → [DeviceStage]``, where a chain with
per-sample stages or a ``collate_fn`` is ``ReadSamples → Decode → [Conform] → *stages → Batch``. Worker processes
decode into shared memory and the loader takes those arrays as they are (:mod:`.channel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchdata.nodes import BaseNode

from ..counters import Counters
from ..options import WorkerOptions
from .chain import WorkerChain
from .device import DeviceStage
from .epochs import EpochSource
from .to_torch import ToTorch
from .workers import Workers

__all__ = ["Graph", "default_graph"]


@dataclass
class Graph:
    """The nodes of a default graph; ``root`` is what to iterate (or wrap in ``torchdata.nodes.Loader``)."""

    epochs: EpochSource
    workers: Workers
    to_torch: ToTorch
    device: DeviceStage | None = None

    @property
    def root(self) -> BaseNode[Any]:
        return self.device if self.device is not None else self.to_torch

    def state_at(self, epoch: int, batches: int, layout: dict[str, Any] | None, stage: Any = None) -> dict[str, Any]:
        """The root's state for ``batches`` into ``epoch`` (what ``root.reset`` takes)."""
        workers = {
            Workers.SOURCE_KEY: {EpochSource.EPOCH_KEY: epoch, EpochSource.YIELDED_KEY: False},
            Workers.BATCHES_KEY: batches,
            Workers.LAYOUT_KEY: layout,
        }
        state: dict[str, Any] = {ToTorch.SOURCE_KEY: workers}
        if self.device is not None:
            state = {DeviceStage.SOURCE_KEY: state, DeviceStage.STAGE_KEY: stage}
        return state

    def _root_state(self) -> dict[str, Any] | None:
        if self.workers.plan is None:
            return None  # nothing ran yet (and asking the nodes would start a pass)
        return self.root.get_state()

    def position(self) -> tuple[int, int]:
        """``(epoch, batches yielded by the root)`` of the pass in progress (or the last one)."""
        state = self._root_state()
        if state is None:
            return self.epochs.next_epoch, 0
        if self.device is not None:
            state = state[DeviceStage.SOURCE_KEY]
        if state is None:
            return self.workers.position
        workers = state[ToTorch.SOURCE_KEY]
        return int(workers[Workers.SOURCE_KEY][EpochSource.EPOCH_KEY]), int(workers[Workers.BATCHES_KEY])

    def stage_state(self) -> Any:
        """The device stage's state after the last batch the root yielded (None without a device stage)."""
        if self.device is None:
            return None
        return self.device.get_state()[DeviceStage.STAGE_KEY]

    def close(self) -> None:
        if self.device is not None:
            self.device.close()
        self.workers.close()


def default_graph(
    epochs: EpochSource,
    chain: WorkerChain,
    *,
    workers: WorkerOptions | None = None,
    pin_memory: bool = False,
    device: str | torch.device | None = None,
    augment: Any = None,
    details: bool = True,
    cpu_threads: int | None = None,
    counters: Counters | None = None,
) -> Graph:
    """Wire the default graph; with ``augment`` the device stage makes the device copy (on its own stream) and
    gets ``details`` and ``cpu_threads`` (see :class:`DeviceStage`)."""
    parallel = Workers(epochs, chain, options=workers, counters=counters)
    to_torch = ToTorch(
        parallel,
        pin_memory=pin_memory,
        device=None if augment is not None else device,
        dtype=chain.dtype,
        user_batches=chain.collate_fn is not None,
    )
    device_stage = (
        DeviceStage(to_torch, augment, details=details, cpu_threads=cpu_threads) if augment is not None else None
    )
    return Graph(epochs, parallel, to_torch, device_stage)
