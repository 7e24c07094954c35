"""The tar sample reader as a node: one worker's planned samples of one epoch, streamed from their shards."""

from __future__ import annotations

from typing import Any

from torchdata.nodes import BaseNode

from ..counters import Counters
from ..options import ReadOptions
from ..storage import ShardCache
from .items import PlannedSample
from .plan import EpochPlan
from .reading.plain_rows import build_row
from .reading.reader import PlannedSampleReader
from .source import DatasetSource

__all__ = ["ReadSamples"]


class ReadSamples(BaseNode[PlannedSample]):
    """Yields :class:`PlannedSample` for ``worker``'s share of ``plan``, in plan order, from sample ``start``.

    A sample that cannot be read arrives as the reader's ``Skip`` (naming its shard; ``Decode`` raises or counts
    it); samples before the start are passed over undecoded. A shard is checked (sha256, sample count) before any
    of its samples is yielded. State ``{"position": samples yielded from the worker's share}``.

    ``rows=True`` lets :meth:`take_rows` hand samples of plain shards over as unbuilt rows (see
    :mod:`~meddiffuse_stream.nodes.reading.plain_rows`); ``next()`` and :meth:`take` give ``RawSample`` either way.
    """

    POSITION_KEY = "position"

    def __init__(
        self,
        source: DatasetSource,
        plan: EpochPlan,
        worker: int = 0,
        *,
        start: int = 0,
        counters: Counters | None = None,
        read: ReadOptions | None = None,
        rows: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.plan = plan
        self.worker = worker
        self.start = start
        self.counters = counters if counters is not None else Counters()
        refs, padding = plan.worker_share(worker)
        self._padding: list[bool] = padding.tolist()  # a list: read once per sample
        read = read if read is not None else ReadOptions()
        cache = ShardCache(read.cache_dir, read.cache_bytes) if read.cache_dir else None
        self._reader = PlannedSampleReader(
            source, refs, counters=self.counters, policy=read.retry, cache=cache, seed=plan.seed, rows=rows
        )
        self._position = start

    def __len__(self) -> int:
        """Samples in the worker's share of the epoch."""
        return len(self._padding)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._position = int(initial_state[self.POSITION_KEY]) if initial_state is not None else self.start
        self._reader.reset({PlannedSampleReader.POSITION_KEY: self._position})

    def next(self) -> PlannedSample:
        item = next(self._reader)
        if type(item) is tuple:  # a plain shard's row: built
            item = build_row(item)
        padding = self._padding[self._position]
        self._position += 1
        return PlannedSample(item, padding)

    def take(self, count: int) -> list[PlannedSample]:
        """The next ``count`` planned samples at once (fewer at the end of the share): what ``count`` calls of
        ``next()`` give, without a node call per sample (the batching stage's way)."""
        items, padding = self.take_rows(count)
        return [
            PlannedSample(build_row(item) if type(item) is tuple else item, pad)
            for item, pad in zip(items, padding, strict=True)
        ]

    def take_rows(self, count: int) -> tuple[list[Any], list[bool]]:
        """The next ``count`` samples and whether each is padding, a plain shard's samples as
        :data:`~meddiffuse_stream.nodes.reading.plain_rows.Row` where ``rows=True``: the fused batch stage's way."""
        items = self._reader.take(count)
        start, self._position = self._position, self._position + len(items)
        return items, self._padding[start : self._position]

    def get_state(self) -> dict[str, Any]:
        return {self.POSITION_KEY: self._position}
