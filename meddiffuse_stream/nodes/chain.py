"""What one worker runs, as a picklable description: read its share of the plan, decode, conform, the user's
stages, batch. Worker processes receive it once and build the node chain per epoch from it.

Without per-sample user stages and with the default collation (the common case, and every benchmark's) the chain
is ``ReadSamples → DecodeBatch``: decode, conform and batch fused, each image decoded straight into its batch's
buffer in the delivery dtype."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchdata.nodes import BaseNode

from ..counters import Counters
from ..storage import RetryPolicy
from .batch import Batch
from .conform import Conform, check_conform, conform_sample
from .decode import DecodeOptions
from .decode_batch import Allocate, DecodeBatch, takes_plain_samples
from .pixels import check_dtype
from .plan import EpochPlan
from .read import ReadSamples
from .source import DatasetSource
from .stages import ON_ERROR, Decode

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
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        check_conform(self.resize, self.resize_mode, self.channels)  # bad values fail here, not in a worker
        object.__setattr__(self, "dtype", check_dtype(self.dtype))

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
    ) -> BaseNode[Any]:
        """The chain yielding ``worker``'s batches of ``plan`` from its sample ``start`` (a multiple of the batch
        size, or the end of its share); ``allocate(shape, dtype)`` makes batch arrays (shared ones in a worker
        process)."""
        counters = counters if counters is not None else Counters()
        where = f"worker {worker}"
        conform = self.resize is not None or self.channels is not None
        rows = self.fused and takes_plain_samples(self.decode, conform)  # plain shards as rows: DecodeBatch's way
        node: BaseNode[Any] = ReadSamples(
            self.source,
            plan,
            worker,
            start=start,
            counters=counters,
            policy=self.policy,
            cache_dir=self.cache_dir,
            cache_bytes=self.cache_bytes,
            rows=rows,
        )
        if self.fused:
            size = check_conform(self.resize, self.resize_mode, self.channels)
            fit = functools.partial(conform_sample, size=size, mode=self.resize_mode, channels=self.channels)
            return DecodeBatch(
                node,
                self.source,
                self.decode,
                plan.batch_size,
                dtype=self.dtype,
                on_error=self.on_error,
                conform=fit if conform else None,
                allocate=allocate,
                counters=counters,
                where=where,
            )
        node = Decode(node, self.source, self.decode, self.on_error)
        if conform:
            node = Conform(node, self.resize, self.resize_mode, self.channels)
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
        )
