"""One worker's stage chain: read planned samples, decode, apply the user transform, cut into batch-sized chunks.

A planned sample that cannot be used raises (``on_error="raise"``, naming shard and key) or is skipped and counted
(``on_error="skip"``). A skipped sample's slot is filled with a copy of a good sample of the same worker, so every
batch keeps its planned size and every rank its planned batch count — a corrupt shard on one rank must never
make DDP ranks disagree — and the counters keep ``yielded + skipped == total``, copies counted as ``padded``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..counters import Counters
from ..retry import RetryPolicy
from ..shard_cache import ShardCache
from .collate import collate
from .decode import DecodeOptions, SampleError, decode_sample
from .plan import EpochPlan
from .reader import PlannedSampleReader, Skip
from .source import DatasetSource

__all__ = ["ChunkBuilder", "StageConfig"]

ON_ERROR = ("raise", "skip")


class LoaderDataError(RuntimeError):
    """Bad data met with ``on_error="raise"``; the message names the shard and the key."""


@dataclass(frozen=True)
class StageConfig:
    """Everything a worker needs to produce its chunks; picklable for worker processes."""

    source: DatasetSource
    plan: EpochPlan
    decode: DecodeOptions
    on_error: str = "raise"
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    policy: RetryPolicy = RetryPolicy()  # noqa: RUF009 - frozen, so one shared default is safe
    cache_dir: str | None = None
    cache_bytes: int = 50 << 30

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")


class ChunkBuilder:
    """Yields collated chunks of ``plan.batch_size`` samples (the last may be smaller) for one worker and epoch.

    Node contract without torch: ``reset({"position": samples_done})``, ``get_state()``, ``next()``.
    """

    POSITION_KEY = "position"

    def __init__(self, config: StageConfig, worker: int, counters: Counters | None = None) -> None:
        self.config = config
        self.worker = worker
        self.counters = counters if counters is not None else Counters()
        cache = ShardCache(config.cache_dir, config.cache_bytes) if config.cache_dir else None
        self._reader = PlannedSampleReader(
            config.source,
            config.plan.worker_refs(worker),
            counters=self.counters,
            policy=config.policy,
            cache=cache,
            seed=config.plan.seed,
        )
        self._position = 0
        self._last_good: dict[str, Any] | None = None
        self._chunks: Iterator[dict[str, Any]] = iter(())

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        self._position = int(initial_state[self.POSITION_KEY]) if initial_state else 0
        self._last_good = None
        self._reader.reset({PlannedSampleReader.POSITION_KEY: self._position})
        self._chunks = self._generate()

    def get_state(self) -> dict[str, Any]:
        return {self.POSITION_KEY: self._position}

    def next(self) -> dict[str, Any]:
        chunk = next(self._chunks)
        self._position += len(chunk["key"])
        return chunk

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    __next__ = next

    def _generate(self) -> Iterator[dict[str, Any]]:
        size = self.config.plan.batch_size
        pending: list[dict[str, Any] | None] = []
        waiting: list[list[dict[str, Any] | None]] = []  # all-bad chunks before any good sample was seen
        for item in self._reader:
            pending.append(self._decode(item))
            if len(pending) == size:
                yield from self._emit(pending, waiting)
                pending = []
        if pending:
            yield from self._emit(pending, waiting)
        if waiting:
            raise LoaderDataError(
                f"worker {self.worker}: every one of its samples this epoch was skipped, so none can stand in "
                "(see loader.counters for the reasons)"
            )

    def _emit(
        self, pending: list[dict[str, Any] | None], waiting: list[list[dict[str, Any] | None]]
    ) -> Iterator[dict[str, Any]]:
        good = [s for s in pending if s is not None]
        if good:
            self._last_good = good[-1]
        if self._last_good is None:
            waiting.append(pending)
            return
        for chunk in [*waiting, pending]:
            yield self._fill(chunk)
        waiting.clear()

    def _decode(self, item: Any) -> dict[str, Any] | None:
        try:
            if isinstance(item, Skip):
                raise SampleError(item.reason, item.kind)
            sample = decode_sample(item, self.config.decode)
            if self.config.transform is not None:
                sample = self._transform(sample)
        except SampleError as error:
            where = self.config.source.describe(item.ref[0])
            message = str(error) if str(error).startswith(where) else f"{where}: {error}"
            if self.config.on_error == "raise":
                raise LoaderDataError(f"{message} (pass on_error='skip' to skip and count it)") from error
            self.counters.skip(error.kind)
            return None
        self.counters["yielded"] += 1
        return sample

    def _transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        import torch  # a user transform works on tensors, as with a DataLoader

        from .collate import to_unit_float

        tensor_sample = dict(sample, image=torch.from_numpy(to_unit_float(sample["image"])))
        result = self.config.transform(tensor_sample)  # type: ignore[misc]
        if not isinstance(result, dict) or "image" not in result or "label" not in result:
            raise TypeError("transform must return the sample dict it was given, with 'image' and 'label'")
        return result

    def _fill(self, pending: list[dict[str, Any] | None]) -> dict[str, Any]:
        filled = [s if s is not None else self._last_good for s in pending]
        self.counters["padded"] += sum(s is None for s in pending)
        return collate(filled)  # type: ignore[arg-type]
