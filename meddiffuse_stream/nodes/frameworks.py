"""What training frameworks learn from a DataLoader that they cannot learn from this loader by themselves.

- **Accelerate** learns where an epoch ends from its own ``DataLoaderShard``, which registers with the
  ``GradientState`` and marks the last batch (``end_of_dataloader``); ``accumulate()`` syncs there and starts the
  next accumulation window afresh, and ``gather_for_metrics`` drops the repeats of the last step
  (``remainder``). ``accelerator.prepare`` passes this loader through unchanged, so a pass registers itself the
  same way (:func:`gradient_state_pass`) whenever an ``Accelerator`` exists in the process: without it, windows ran
  across epochs (7 optimizer steps where a DataLoader gives 8). The loader knows its batch count in advance, so the
  last batch is marked as it is handed over, without reading one ahead.
- ``accelerator.skip_first_batches`` rebuilds a torch ``DataLoader`` from ``loader.batch_sampler``, which cannot
  work here (batches are cut in the workers): :class:`BatchSamplerStandIn` makes that fail at once with a message
  naming ``loader.skip(n)`` instead of ``'NoneType' object is not iterable``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["BatchSamplerStandIn", "EpochSetter", "PassMarker", "gradient_state_pass"]

SKIP_HINT = (
    "MedDiffuseLoader cuts its batches in its workers, so a torch DataLoader rebuilt from loader.batch_sampler "
    "(what accelerator.skip_first_batches does) cannot read them: call loader.skip(n) — the next pass starts n "
    "batches later without reading them. After accelerator.load_state the loader already resumes where its state "
    "was saved: nothing needs skipping"
)


class PassMarker:
    """What Accelerate's ``GradientState`` asks of the dataloader being iterated."""

    def __init__(self, remainder: int) -> None:
        self.end_of_dataloader = False
        self.remainder = remainder


def _gradient_state() -> Any | None:
    """Accelerate's shared ``GradientState`` if an ``Accelerator`` was made in this process (never imported here)."""
    module = sys.modules.get("accelerate.state")
    state = getattr(module, "GradientState", None) if module is not None else None
    if state is None or not getattr(state, "_shared_state", None):
        return None
    try:
        return state()
    except Exception:  # another accelerate than the one this was written against: no registration, no harm
        return None


@contextlib.contextmanager
def gradient_state_pass(remainder: int) -> Iterator[PassMarker | None]:
    """Register a pass with Accelerate's gradient state for its duration (a no-op without an ``Accelerator``);
    set ``marker.end_of_dataloader`` before handing over the last batch. ``remainder``: real samples in the last
    step across ranks, or -1 where ``gather_for_metrics`` must keep every row."""
    state = _gradient_state()
    if state is None:
        yield None
        return
    marker = PassMarker(remainder)
    state._add_dataloader(marker)
    try:
        yield marker
    finally:
        with contextlib.suppress(Exception):
            state._remove_dataloader(marker)


class BatchSamplerStandIn:
    """``loader.batch_sampler``: the DataLoader attributes frameworks read (``batch_size``, ``drop_last``,
    ``sampler``, ``len()``), and an iteration that says what to do instead."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last

    @property
    def sampler(self) -> Any:
        return self._loader.sampler

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[list[int]]:
        raise TypeError(SKIP_HINT)


class EpochSetter:
    """``loader.sampler``: only ``set_epoch`` (the order itself is the loader's epoch plan)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self._loader.epoch
