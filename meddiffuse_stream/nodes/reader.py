"""The reading stage: one worker's planned samples, in plan order, streamed from their shards.

Shards are read front to back, a few at a time; samples that are read before their turn wait in a holding area
whose size the plan bounds (the shuffle buffer). Samples the plan does not need — other workers' or already
yielded ones after a restore — are passed over undecoded, and a shard whose samples are all behind the restore
point is never opened.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..counters import Counters
from ..retry import RetryPolicy
from ..shard_cache import ShardCache
from .plan import SampleRef
from .prefetch import ShardPrefetcher, read_into_memory
from .shard_stream import HashingStream, open_shard
from .source import DatasetSource
from .tar import MAX_MEMBER_BYTES, RawSample, TarProblem, iter_samples

__all__ = ["PlannedSampleReader", "Skip"]


@dataclass(frozen=True)
class Skip:
    """A planned sample that cannot be yielded, and why (the reason names the shard)."""

    ref: SampleRef
    reason: str
    key: str | None = None
    kind: str = "unreadable shard"


class _OpenShard:
    def __init__(self, stream: HashingStream | None, max_member_bytes: int, failure: str | None = None) -> None:
        self.stream: Any = stream if stream is not None else _Closed()
        self.samples: Iterator[RawSample | TarProblem] = (
            iter_samples(stream, max_member_bytes) if stream is not None else iter(())
        )
        self.next_index = 0
        self.refused_key: str | None = None  # the sample a refused member belonged to: its other members follow
        self.failure = failure
        self.failure_kind = "unreadable shard"


class PlannedSampleReader:
    """Yields :class:`RawSample` (with ``ref`` set) or :class:`Skip`, one per planned ref, in plan order.

    It follows the ``torchdata.nodes`` contract (``reset(state)``, ``get_state()``, ``next()``) without importing
    torch; :class:`meddiffuse_stream.nodes.read.ReadSamples` wraps it as a node.
    """

    POSITION_KEY = "position"

    def __init__(
        self,
        source: DatasetSource,
        refs: list[SampleRef],
        *,
        counters: Counters,
        policy: RetryPolicy | None = None,
        cache: ShardCache | None = None,
        seed: int = 0,
        on_error: str = "raise",
        max_member_bytes: int = MAX_MEMBER_BYTES,
        prefetch_bytes: int = 256 << 20,
    ) -> None:
        self.on_error = on_error
        self.prefetch_bytes = prefetch_bytes
        self._prefetchable: set[int] = set()
        self.source = source
        self.refs = refs
        self.counters = counters
        self.policy = policy or RetryPolicy()
        self.cache = cache
        self.seed = seed
        self.max_member_bytes = max_member_bytes
        self._position = 0
        self._items: Iterator[Any] = iter(())

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        self._close_all()
        self._position = int(initial_state[self.POSITION_KEY]) if initial_state else 0
        self._items = self._generate(self._position)

    def get_state(self) -> dict[str, Any]:
        return {self.POSITION_KEY: self._position}

    def next(self) -> RawSample | Skip:
        item = next(self._items)
        self._position += 1
        return item

    def __iter__(self) -> Iterator[RawSample | Skip]:
        return self

    __next__ = next

    def _close_all(self) -> None:
        for shard in getattr(self, "_open", {}).values():
            shard.stream.close()
        self._open: dict[int, _OpenShard] = {}
        if getattr(self, "_prefetcher", None) is not None:
            self._prefetcher.close()
        self._prefetcher: ShardPrefetcher | None = None

    def _start_prefetch(self, refs: list[SampleRef]) -> None:
        """Remote shards that fit in memory are fetched one ahead; local files stream directly."""
        order = list(dict.fromkeys(shard for shard, _ in refs))
        remote = not self.source.location.is_local and self.cache is None
        limit = self.prefetch_bytes
        self._prefetchable = {s for s in order if remote and (self.source.shards[s].bytes or limit + 1) <= limit}
        self._prefetcher = ShardPrefetcher(self._fetch, order, self._prefetchable)

    def _generate(self, start: int) -> Iterator[RawSample | Skip]:
        refs = self.refs[start:]
        self._start_prefetch(refs)
        remaining = Counter(shard for shard, _ in refs)
        wanted = set(refs)
        reads_to_end = {s for s in remaining if (s, self.source.shards[s].samples - 1) in wanted}
        held: dict[SampleRef, RawSample | Skip] = {}
        try:
            for ref in refs:
                if ref not in held:
                    self._read_until(ref, wanted, held)
                item = held.pop(ref)
                wanted.discard(ref)
                shard = ref[0]
                remaining[shard] -= 1
                if remaining[shard] == 0:
                    self._finish(shard, shard in reads_to_end)
                yield item
        finally:
            self._close_all()

    def _read_until(self, ref: SampleRef, wanted: set[SampleRef], held: dict[SampleRef, RawSample | Skip]) -> None:
        shard_index, sample_index = ref
        shard = self._open.get(shard_index)
        if shard is None:
            shard = self._open_shard(shard_index)
        while ref not in held:
            if shard.failure is not None:
                held[ref] = Skip(ref, shard.failure, kind=shard.failure_kind)
                return
            try:
                item = next(shard.samples, None)
            except Exception as error:  # missing object, spent retry budget: the rest of the shard is lost
                shard.failure = f"{self.source.describe(shard_index)}: {type(error).__name__}: {error}"
                continue
            if item is None:
                expected = self.source.shards[shard_index].samples
                where = self.source.describe(shard_index)
                shard.failure = f"{where} holds {shard.next_index} samples, dataset.json lists {expected}"
                shard.failure_kind = "shard shorter than listed"
                continue
            if isinstance(item, TarProblem):
                where = f"{self.source.describe(shard_index)}: {item.reason}"
                if item.fatal:
                    shard.failure = where
                    shard.failure_kind = "truncated or corrupt tar"
                else:
                    self.counters[f"refused_members:{item.reason.split(' ')[0]}"] += 1
                    if item.key is None or item.key != shard.refused_key:
                        # the sample the member belongs to takes its position, skipped: it is not trusted, and
                        # its other members (which follow under the same key) are passed over below
                        position = (shard_index, shard.next_index)
                        shard.next_index += 1
                        shard.refused_key = item.key
                        if position in wanted:
                            held[position] = Skip(position, where, item.key, "refused tar member")
                continue
            if item.key == shard.refused_key:
                continue  # the rest of a refused sample
            shard.refused_key = None
            position = (shard_index, shard.next_index)
            shard.next_index += 1
            if position in wanted and position not in held:
                item.ref = position
                held[position] = item
        if sample_index >= self.source.shards[shard_index].samples:
            held[ref] = Skip(ref, f"{self.source.describe(shard_index)}: sample {sample_index} beyond the shard",
                             kind="shard shorter than listed")  # fmt: skip

    def _fetch(self, index: int) -> HashingStream:
        rng = np.random.default_rng((self.seed, index, 7))
        stream = open_shard(self.source, index, policy=self.policy, rng=rng, counters=self.counters, cache=self.cache)
        if index in self._prefetchable:
            info = self.source.shards[index]
            return read_into_memory(stream, info.sha256, self.source.describe(index))
        return stream

    def _open_shard(self, index: int) -> _OpenShard:
        try:
            shard = _OpenShard(self._prefetcher.get(index), self.max_member_bytes)
        except Exception as error:  # missing object, retry budget spent, integrity failure: every sample skips
            failure = f"{self.source.describe(index)}: {type(error).__name__}: {error}"
            shard = _OpenShard(None, self.max_member_bytes, failure)
        self._open[index] = shard
        return shard

    def _finish(self, index: int, read_to_end: bool) -> None:
        shard = self._open.pop(index, None)
        if shard is None:
            return
        try:
            if read_to_end and shard.failure is None:
                shard.stream.verify()
                self.counters["shards_verified"] += 1
        except Exception:
            self.counters["integrity_errors"] += 1
            if self.on_error == "raise":
                raise
        finally:
            shard.stream.close()


class _Closed:
    def read(self, size: int = -1) -> bytes:
        return b""

    def verify(self) -> None:
        return None

    def close(self) -> None:
        return None
