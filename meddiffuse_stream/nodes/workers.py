"""The parallel stage: each worker runs its :class:`WorkerChain` on its share of the epoch; batches come back in
plan order. Work crosses processes per epoch (one command) and per batch (one array chunk), never per sample.

State ``{"source": the epoch source's state before this epoch, "batches": yielded, "layout": plan settings}`` — the
rank is not part of it: every rank is at the same position, so any rank's state resumes any rank. Resuming in the
middle of an epoch needs the same layout (world size, workers, batch size, seed ...); at an epoch's start or end
any layout goes on exactly once.

Workers read ahead: :meth:`Workers.prepare` (the loader calls it when it is built) and the hand-over of an epoch's
last batch set them to work on where the next ``reset`` will most likely start; a ``reset`` anywhere else drops
that (at most ``prefetch`` batches per worker).
"""

from __future__ import annotations

from typing import Any

from torchdata.nodes import BaseNode

from ..counters import Counters
from ..options import WorkerOptions
from .chain import WorkerChain
from .epochs import EpochSource
from .plan import EpochPlan
from .transport.pool import WorkerPool
from .transport.seeding import WorkerSeeds

__all__ = ["Workers", "resume_position", "version2_uneven_position"]


class Workers(BaseNode[Any]):
    """Yields the rank's batches (a chunk per batch, from the chain's ``Batch``) in plan order.

    ``num_workers`` comes from the plan: 0 runs the chain in the calling thread.
    """

    SOURCE_KEY = "source"
    BATCHES_KEY = "batches"
    LAYOUT_KEY = "layout"

    def __init__(
        self,
        source: EpochSource,
        chain: WorkerChain,
        *,
        options: WorkerOptions | None = None,
        counters: Counters | None = None,
    ) -> None:
        super().__init__()
        options = options if options is not None else WorkerOptions()
        self.source = source
        self.chain = chain
        self.counters = counters if counters is not None else Counters()
        self.persistent = options.persistent
        self.timeout = options.timeout
        self.pool = WorkerPool(chain, source.settings["num_workers"], options)
        self._plan: EpochPlan | None = None
        self._source_state: dict[str, Any] = {}
        self._batches = 0
        self._schedule: list[int] = []
        self._inline: BaseNode[Any] | None = None
        self._ahead: tuple[EpochPlan, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_inline=None, _ahead=None)  # live readers stay behind; a pickled node resumes by state
        state["_resume"] = self.get_state() if self._plan is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def plan(self) -> EpochPlan | None:
        """The plan of the current pass (None before the first)."""
        return self._plan

    @property
    def position(self) -> tuple[int, int]:
        """``(epoch, batches yielded in it)``."""
        return (self._plan.epoch, self._batches) if self._plan is not None else (self.source.next_epoch, 0)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.__dict__.pop("_resume", None)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)
        self._source_state = self.source.state_dict()
        plan = next(self.source)
        batches = 0
        if initial_state is not None:
            batches = resume_position(plan, int(initial_state[self.BATCHES_KEY]), initial_state.get(self.LAYOUT_KEY))
        self._start(plan, batches)

    def _start(self, plan: EpochPlan, batches: int) -> None:
        self._plan, self._batches, self._schedule = plan, batches, plan.schedule()
        if batches == 0 and plan.padded_count():
            self.counters["padded_for_ranks"] += plan.padded_count()
        ahead, self._ahead = self._ahead, None
        if plan.num_workers == 0:  # this process's global generators are the caller's: only worker_info()'s reseeded
            seeds = WorkerSeeds(0, 0, own_process=False)
            seeds.start_epoch(plan.seed, plan.rank, plan.epoch, self.chain.source)
            self._inline = self.chain.build(plan, 0, plan.skips(batches)[0], self.counters, seeds=seeds)
            self._inline.reset(None)
        elif ahead != (plan, batches) or not self.pool.started:
            self.pool.send(plan, plan.skips(batches))

    def prepare(self, epoch: int | None = None, batches: int = 0) -> None:
        """Start the workers on ``epoch`` (default: the next one) from batch ``batches`` ahead of the ``reset``
        that will ask for it; a ``reset`` elsewhere drops it."""
        if self.source.settings["num_workers"] == 0:
            return
        plan = self.source.plan_for(self.source.next_epoch if epoch is None else epoch)
        self.pool.send(plan, plan.skips(batches))
        self._ahead = (plan, batches)

    def next(self) -> Any:
        resume = self.__dict__.pop("_resume", None)
        if resume is not None:  # unpickled in the middle of a pass: pick it up where it was
            self.reset(resume)
        if self._plan is None or self._batches >= len(self._schedule):
            raise StopIteration
        where = f"while producing epoch {self._plan.epoch}, batch {self._batches}"
        if self._inline is not None:
            chunk = next(self._inline)
        else:
            chunk, delta = self.pool.receive(self._schedule[self._batches], self.timeout, where, self.counters)
            self.counters.update(delta)
        if self.chain.collate_fn is None and isinstance(chunk, dict):  # a collate_fn's batch is the user's, as is
            chunk["position"] = (self._plan.epoch, self._plan.rank, self._batches)  # stages that draw seed from it
        self._batches += 1
        if self._batches == len(self._schedule):
            if self._inline is None and self.persistent:
                self.prepare()  # the next epoch's first shards arrive while the caller trains on this batch
            elif not self.persistent:
                self.pool.close()
        return chunk

    def get_state(self) -> dict[str, Any]:
        if self._plan is None:
            return {self.SOURCE_KEY: self.source.state_dict(), self.BATCHES_KEY: 0, self.LAYOUT_KEY: None}
        return {
            self.SOURCE_KEY: self._source_state,
            self.BATCHES_KEY: self._batches,
            self.LAYOUT_KEY: self._plan.layout(),
        }

    def close(self) -> None:
        """Stop the workers (they start again if the node is used again)."""
        self.pool.close()
        self._ahead = None
        self._inline = None


def resume_position(plan: EpochPlan, batches: int, layout: dict[str, Any] | None) -> int:
    """Where a restored epoch starts under ``plan``: the saved count, or the end if it was saved at the end."""
    if layout is None or layout == plan.layout():
        if not 0 <= batches <= plan.num_batches:
            raise ValueError(f"batch position {batches} is outside epoch {plan.epoch}'s {plan.num_batches} batches")
        return batches
    saved = EpochPlan(plan.shard_sizes, **{k: v for k, v in layout.items() if k != "samples"}, epoch=plan.epoch)
    if layout.get("samples") != plan.total:
        raise ValueError(f"this state is from a dataset of {layout.get('samples')} samples, not {plan.total}")
    if batches == 0:
        return 0
    if batches >= saved.num_batches:
        return plan.num_batches  # the epoch was over: the next pass starts the next one, in the new layout
    changed = ", ".join(
        f"{k}: saved {v!r}, now {plan.layout()[k]!r}" for k, v in layout.items() if plan.layout()[k] != v
    )
    raise ValueError(
        f"cannot resume in the middle of epoch {plan.epoch} (batch {batches} of {saved.num_batches}) with another "
        f"layout ({changed}): which samples are left depends on it. Resume with the saved settings, or from a state "
        "taken at an epoch's end (the next epoch then starts in the new layout)"
    )


def version2_uneven_position(epoch: int, batches: int, settings: dict[str, Any], rank: Any) -> tuple[int, int]:
    """Where a version-2 state of an ``even_batches=False`` loader resumes: the next epoch if it was taken at its
    epoch's end; mid-epoch it cannot (its ranks took other samples than this version's layout gives them)."""
    total, world, size = int(settings["samples"]), int(settings["world_size"]), int(settings["batch_size"])
    rank = int(rank or 0)
    if batches >= -(-((rank + 1) * total // world - rank * total // world) // size):
        return epoch + 1, 0
    raise ValueError(
        "this state of an even_batches=False loader was saved mid-epoch by an earlier version, whose ranks took "
        "other samples: resume from a state taken at an epoch's start or end"
    )
