"""Which rows of a batch a ``(images, labels)`` tuple shows: every row but the stand-ins for dropped samples.

A sample a filter drops or ``on_error="skip"`` skips keeps its slot in the worker's batch, filled with a copy of a
good sample and marked ``is_padding`` — what keeps batch shapes, batch counts per rank and exact resume. A dict
batch shows the mark; a tuple cannot, and unmarked copies would train on one image many times over. So a tuple
leaves those rows out (the batch is shorter, empty when every sample of it was dropped), while the repeats that
even out the ranks (also ``is_padding``) stay, as ``DistributedSampler``'s do: they are what keeps DDP ranks in step.

Telling the two apart costs nothing per batch unless the batch holds a marked row; then the rank's repeats are
looked up in the epoch plan (once per worker and epoch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .plan import EpochPlan

__all__ = ["StandInRows"]


class StandInRows:
    """``keep(batch, plan)``: the rows a tuple shows, or None for all of them (the common case)."""

    def __init__(self) -> None:
        self._repeats: dict[tuple[int, int, int], np.ndarray] = {}

    def keep(self, batch: dict[str, Any], plan: EpochPlan | None) -> torch.Tensor | None:
        marked = batch.get("is_padding")
        if not isinstance(marked, torch.Tensor) or not bool(marked.any()):
            return None
        position = batch.get("position")
        repeats = self._rank_repeats(plan, position) if plan is not None and position is not None else None
        if repeats is None or len(repeats) != len(marked):  # no plan to ask: every marked row is left out
            return ~marked
        return ~marked | torch.from_numpy(repeats).to(marked.device)

    def _rank_repeats(self, plan: EpochPlan, position: tuple[int, int, int]) -> np.ndarray | None:
        """Which rows of the batch at ``position`` repeat samples to even out the ranks (None: not this plan's)."""
        epoch, rank, index = (int(v) for v in position)
        if (plan.epoch, plan.rank) != (epoch, rank) or not 0 <= index < plan.num_batches:
            return None
        if not plan.padded_count():
            return np.zeros(min(plan.batch_size, plan.per_rank - index * plan.batch_size), dtype=bool)
        schedule = plan.schedule()
        worker = schedule[index]
        number = schedule[:index].count(worker)
        key = (epoch, rank, worker)
        if key not in self._repeats:
            self._repeats = {k: v for k, v in self._repeats.items() if k[0] >= epoch}  # earlier epochs are done
            self._repeats[key] = plan.worker_padding(worker)
        return self._repeats[key][number * plan.batch_size : (number + 1) * plan.batch_size]
