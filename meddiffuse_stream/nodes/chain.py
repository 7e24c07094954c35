"""What one worker runs, as a picklable description: read its share of the plan, decode, conform, the user's
stages, batch. Worker processes receive it once and build the node chain per epoch from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchdata.nodes import BaseNode

from ..counters import Counters
from ..retry import RetryPolicy
from .batch import Batch
from .conform import Conform, check_conform
from .decode import DecodeOptions
from .plan import EpochPlan
from .read import ReadSamples
from .source import DatasetSource
from .stages import ON_ERROR, Decode

__all__ = ["Stage", "WorkerChain"]

Stage = Callable[[BaseNode[Any]], BaseNode[Any]]  # upstream node -> a node over it, e.g. partial(Map, fn=...)


@dataclass(frozen=True)
class WorkerChain:
    """``ReadSamples → Decode → [Conform] → *stages → Batch`` for one worker.

    ``stages`` are callables taking the upstream node and returning a one-in-one-out node over it —
    ``functools.partial(Map, fn=my_fn)``, ``partial(ImageMap, fn=my_transform)``, ``partial(Filter,
    predicate=...)`` or a ``BaseNode`` class of your own that passes :class:`~meddiffuse_stream.nodes.items.Skipped`
    markers through. With worker processes they must be picklable (module-level functions, not lambdas) unless the
    workers are forked.
    """

    source: DatasetSource
    decode: DecodeOptions = DecodeOptions()  # noqa: RUF009 - frozen, so one shared default is safe
    stages: tuple[Stage, ...] = ()
    on_error: str = "raise"
    resize: int | tuple[int, int] | None = None
    resize_mode: str = "crop"
    channels: int | None = None
    collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None
    policy: RetryPolicy = RetryPolicy()  # noqa: RUF009 - frozen, so one shared default is safe
    cache_dir: str | None = None
    cache_bytes: int = 50 << 30

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        check_conform(self.resize, self.resize_mode, self.channels)  # bad values fail here, not in a worker

    def build(self, plan: EpochPlan, worker: int, start: int = 0, counters: Counters | None = None) -> BaseNode[Any]:
        """The chain yielding ``worker``'s batches of ``plan`` from its sample ``start`` (a multiple of the batch
        size, or the end of its share)."""
        counters = counters if counters is not None else Counters()
        node: BaseNode[Any] = ReadSamples(self.source, plan, worker, start=start, counters=counters,
                                          policy=self.policy, cache_dir=self.cache_dir,
                                          cache_bytes=self.cache_bytes)  # fmt: skip
        node = Decode(node, self.source, self.decode, self.on_error)
        if self.resize is not None or self.channels is not None:
            node = Conform(node, self.resize, self.resize_mode, self.channels)
        for stage in self.stages:
            node = stage(node)
        return Batch(node, plan.batch_size, counters=counters, collate_fn=self.collate_fn, where=f"worker {worker}")

