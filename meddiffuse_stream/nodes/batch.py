"""The batching stage: a worker's samples into batch-sized chunks, every skipped slot filled.

A skipped slot (bad data, a filter) is filled with a copy of a good sample of the same worker, marked
``is_padding``, so every batch keeps its planned size and every rank its planned batch count — a corrupt shard on
one rank must never make DDP ranks disagree — and the counters keep ``yielded + skipped == total``, the copies
counted as ``padded``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from ..counters import Counters
from ..options import Dtype
from .chunked import ChunkNode
from .collate import collate
from .errors import LoaderDataError
from .items import Skipped, as_tensor_sample
from .pixels import deliver

__all__ = ["Batch"]

Sample = dict[str, Any]


class Batch(ChunkNode[Any]):
    """Yields a collated chunk per ``batch_size`` upstream items (the last may be smaller).

    ``collate_fn(samples)`` replaces the default (numpy arrays, images in the delivery ``dtype``, stacked into
    ``allocate``'s memory where given) with the user's, which gets the samples as ``transform=`` sees them.
    ``before_chunk()`` runs before the first sample of each chunk is pulled (the chain reseeds the worker's
    generators there). State: the upstream's after the last chunk yielded.
    """

    def __init__(
        self,
        source: BaseNode[Any],
        batch_size: int,
        *,
        counters: Counters | None = None,
        collate_fn: Callable[[list[Sample]], Any] | None = None,
        where: str = "this worker",
        dtype: Dtype = "float32",
        allocate: Callable[[tuple[int, ...], Any], Any] | None = None,
        before_chunk: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(source)
        self.before_chunk = before_chunk
        self.batch_size = batch_size
        self.counters = counters if counters is not None else Counters()
        self.collate_fn = collate_fn
        self.where = where
        self.dtype = dtype
        self.allocate = allocate

    def _generate(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Yields ``(chunk, upstream state at the chunk's end)``."""
        pending: list[Sample | Skipped] = []
        waiting: list[tuple[list[Sample | Skipped], dict[str, Any]]] = []  # all-skipped chunks before a good one
        last_good: list[Sample] = []
        upstream = iter(self.source)
        while True:
            if not pending and self.before_chunk is not None:
                self.before_chunk()  # the worker's generators seeded for this chunk (see transport.seeding)
            try:
                item = next(upstream)
            except StopIteration:
                break
            if isinstance(item, Skipped):
                self.counters.skip(item.kind)
            else:
                self.counters["yielded"] += 1
            pending.append(item)
            if len(pending) == self.batch_size:
                yield from self._emit((pending, self.source.state_dict()), waiting, last_good)
                pending = []
        if pending:
            yield from self._emit((pending, self.source.state_dict()), waiting, last_good)
        if waiting:
            raise LoaderDataError(
                f"{self.where}: every one of its samples this epoch was skipped, so none can stand in "
                "(see loader.counters for the reasons)"
            )

    def _emit(
        self,
        pending: tuple[list[Sample | Skipped], dict[str, Any]],
        waiting: list[tuple[list[Sample | Skipped], dict[str, Any]]],
        last_good: list[Sample],
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        good = [s for s in pending[0] if not isinstance(s, Skipped)]
        if good:
            last_good[:] = [good[-1]]
        if not last_good:
            waiting.append(pending)
            return
        for chunk, state in [*waiting, pending]:
            yield self._fill(chunk, last_good[0]), state
        waiting.clear()

    def _fill(self, pending: list[Sample | Skipped], stand_in: Sample) -> Any:
        filled = [s if not isinstance(s, Skipped) else dict(stand_in, is_padding=True) for s in pending]
        self.counters["padded"] += len(pending) - sum(not isinstance(s, Skipped) for s in pending)
        if self.collate_fn is not None:
            return self.collate_fn([as_tensor_sample(s) for s in filled])
        image = filled[0]["image"]
        stack_into = self.allocate if getattr(image, "dtype", None) == np.dtype(self.dtype) else None
        chunk = collate(filled, stack_into)
        if isinstance(chunk["image"], np.ndarray):
            chunk["image"] = deliver(chunk["image"], self.dtype, chunk["key"], self.allocate)
        return chunk
