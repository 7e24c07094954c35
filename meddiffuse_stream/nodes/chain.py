"""What one worker runs, as a picklable description: read its share of the plan, decode, conform, the user's
stages, batch. Worker processes receive it once and build the node chain per epoch from it.

Without per-sample user stages and with the default collation (the common case, and every benchmark's) the chain
is ``ReadSamples → DecodeBatch``: decode, conform and batch fused, each image decoded straight into its batch's
buffer in the delivery dtype."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchdata.nodes import BaseNode

from ..counters import Counters
from ..options import ConformOptions, Dtype, OnError, ReadOptions, check_dtype, check_on_error
from .batch import Batch
from .conform import Conform, conform_sample
from .decode import DecodeOptions
from .decode_batch import Allocate, DecodeBatch, takes_plain_samples
from .plan import EpochPlan
from .read import ReadSamples
from .source import DatasetSource
from .stages import Decode
from .transport.seeding import WorkerSeeds

__all__ = ["Stage", "WorkerChain"]

Stage = Callable[[BaseNode[Any]], BaseNode[Any]]  # upstream node -> a node over it, e.g. partial(Map, fn=...)


@dataclass(frozen=True)
class WorkerChain:
    """``ReadSamples → Decode → [Conform] → *stages → Batch`` for one worker (``ReadSamples → DecodeBatch``
    without ``stages`` and ``collate_fn``). ``dtype``: the images' delivery dtype (:mod:`.pixels`).

    ``stages`` are callables taking the upstream node and returning a one-in-one-out node over it —
    ``functools.partial(Map, fn=my_fn)``, ``partial(ImageMap, fn=my_transform)``, ``partial(Filter,
    predicate=...)`` or a ``BaseNode`` class of your own that passes :class:`~meddiffuse_stream.nodes.items.Skipped`
    markers through. With worker processes they must be picklable (module-level functions, not lambdas) unless the
    workers are forked. The chain is the public boundary of a composed graph: ``on_error`` and ``dtype`` are
    checked here, once; the options objects check themselves when made.
    """

    source: DatasetSource
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    stages: tuple[Stage, ...] = ()
    on_error: OnError = "raise"
    conform: ConformOptions = field(default_factory=ConformOptions)
    collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    dtype: Dtype = "float32"

    def __post_init__(self) -> None:
        check_on_error(self.on_error)
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def fused(self) -> bool:
        """Whether workers decode straight into batch buffers (no per-sample stages, the default collation)."""
        return not self.stages and self.collate_fn is None

    def build(
        self,
        plan: EpochPlan,
        worker: int,
        start: int = 0,
        counters: Counters | None = None,
        allocate: Allocate | None = None,
        seeds: WorkerSeeds | None = None,
    ) -> BaseNode[Any]:
        """The chain yielding ``worker``'s batches of ``plan`` from its sample ``start`` (a multiple of the batch
        size, or the end of its share); ``allocate(shape, dtype)`` makes batch arrays (shared ones in a worker
        process); ``seeds`` reseeds the worker's generators before each batch that passes through user code."""
        counters = counters if counters is not None else Counters()
        where = f"worker {worker}"
        rows = self.fused and takes_plain_samples(self.decode, self.conform.active)  # DecodeBatch's way
        reader = ReadSamples(self.source, plan, worker, start=start, counters=counters, read=self.read, rows=rows)
        node: BaseNode[Any] = reader
        if self.fused:
            fit = functools.partial(conform_sample, options=self.conform)
            return DecodeBatch(
                node,
                self.source,
                self.decode,
                plan.batch_size,
                dtype=self.dtype,
                on_error=self.on_error,
                conform=fit if self.conform.active else None,
                allocate=allocate,
                counters=counters,
                where=where,
            )
        node = Decode(node, self.source, self.decode, self.on_error)
        if self.conform.active:
            node = Conform(node, self.conform)
        for stage in self.stages:
            node = stage(node)
        return Batch(
            node,
            plan.batch_size,
            counters=counters,
            collate_fn=self.collate_fn,
            where=where,
            dtype=self.dtype,
            allocate=allocate,
            before_chunk=_batch_seeding(seeds, reader, plan.batch_size) if seeds is not None else None,
        )


def _batch_seeding(seeds: WorkerSeeds, reader: ReadSamples, batch_size: int) -> Callable[[], None]:
    """Reseeds before each batch by its number in the worker's share (where the reader stands), so a resumed
    chain draws what the uninterrupted one drew."""

    def before_chunk() -> None:
        seeds.start_batch(reader.state_dict()[ReadSamples.POSITION_KEY] // batch_size)

    return before_chunk
