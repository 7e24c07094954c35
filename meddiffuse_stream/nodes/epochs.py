"""The epoch plan as a node: the root of a loader graph, one :class:`EpochPlan` per pass.

Like a sampler with ``set_epoch``: each ``reset(None)`` starts the next epoch (or the one ``set_epoch`` named), so
``torchdata.nodes.Loader`` moves on to a new order every time it is iterated. Rank and world size are read when an
epoch starts, not at construction: a loader built before ``torch.distributed.init_process_group`` shards correctly
once the process group exists, and a pickled loader takes the placement of the process it lands in.
"""

from __future__ import annotations

import os
from typing import Any

from torchdata.nodes import BaseNode

from .plan import EpochPlan

__all__ = ["EpochSource", "current_placement"]


def current_placement() -> tuple[int, int]:
    """``(rank, world size)`` from an initialised ``torch.distributed`` group, else ``RANK``/``WORLD_SIZE``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class EpochSource(BaseNode[EpochPlan]):
    """Yields one item per pass: this rank's plan of the epoch. State ``{"epoch", "yielded"}``."""

    EPOCH_KEY = "epoch"
    YIELDED_KEY = "yielded"

    def __init__(
        self,
        shard_sizes: tuple[int, ...],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        buffer_size: int = 1000,
        even: bool = True,
        initial_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.shard_sizes = tuple(int(s) for s in shard_sizes)
        self.settings: dict[str, Any] = {
            "batch_size": batch_size,
            "seed": seed,
            "num_workers": num_workers,
            "shuffle": shuffle,
            "drop_last": drop_last,
            "buffer_size": buffer_size,
            "even": even,
        }
        self.rank = rank
        self.world_size = world_size
        self.plan_for(initial_epoch)  # bad settings fail here, not at the first batch
        self._next_epoch = int(initial_epoch)
        self._epoch = int(initial_epoch)
        self._plan: EpochPlan | None = None
        self._yielded = False

    def placement(self) -> tuple[int, int]:
        """This process's ``(rank, world size)`` now: the explicit values, else the distributed defaults."""
        rank, world = current_placement() if self.rank is None or self.world_size is None else (0, 1)
        return (rank if self.rank is None else self.rank), (world if self.world_size is None else self.world_size)

    def plan_for(self, epoch: int) -> EpochPlan:
        """The plan ``epoch`` would have if it started now (rank and world size read now)."""
        rank, world = self.placement()
        return EpochPlan(self.shard_sizes, epoch=epoch, rank=rank, world_size=world, **self.settings)

    @property
    def epoch(self) -> int:
        """The epoch of the current (or last) pass."""
        return self._epoch

    @property
    def next_epoch(self) -> int:
        """The epoch the next ``reset(None)`` starts."""
        return self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        """The next ``reset(None)`` starts ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self._next_epoch = int(epoch)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:
            epoch, self._yielded = int(initial_state[self.EPOCH_KEY]), bool(initial_state[self.YIELDED_KEY])
        else:
            epoch, self._yielded = self._next_epoch, False
        self._epoch, self._next_epoch = epoch, epoch + 1
        self._plan = self.plan_for(epoch)

    def next(self) -> EpochPlan:
        if self._yielded or self._plan is None:
            raise StopIteration
        self._yielded = True
        return self._plan

    def get_state(self) -> dict[str, Any]:
        return {self.EPOCH_KEY: self._epoch, self.YIELDED_KEY: self._yielded}
