"""The reading stage: one worker's planned samples, in plan order, streamed from their shards.

Shards are read whole, one ahead in a background thread, and checked before any of their samples is used
(sha256 and sample count, see :mod:`~meddiffuse_stream.nodes.reading.shard_stream`); samples that are read before their
turn wait in a holding area whose size the plan bounds (the shuffle buffer). Samples the plan does not need —
other workers' or already yielded ones after a restore — are passed over undecoded, and a shard whose samples are
all behind the restore point is never opened.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from ...counters import Counters
from ...shardfmt.tar import MAX_MEMBER_BYTES, RawSample, TarProblem
from ...storage import RetryPolicy, ShardCache, ShardIntegrityError
from ..plan import SampleRef
from ..source import DatasetSource
from .plain_rows import PlainRows, Row
from .prefetch import ShardPrefetcher
from .shard_stream import DEFAULT_MEMORY_LIMIT, FetchedShard, LoadedShard, fetch_shard

__all__ = ["PlannedSampleReader", "Skip"]


@dataclass(frozen=True)
class Skip:
    """A planned sample that cannot be yielded, and why (the reason names the shard)."""

    ref: SampleRef
    reason: str
    key: str | None = None
    kind: str = "unreadable shard"


class _OpenShard:
    def __init__(self, loaded: LoadedShard | None, failure: str | None = None, kind: str = "unreadable shard") -> None:
        self.loaded = loaded
        self.items: Iterator[RawSample | TarProblem] = loaded.items if loaded is not None else iter(())
        self.samples = loaded.samples if loaded is not None else None  # in memory: taken by position
        self.next_index = 0
        self.failure = failure
        self.failure_kind = kind

    def close(self) -> None:
        if self.loaded is not None:
            self.loaded.close()


class PlannedSampleReader:
    """Yields :class:`RawSample` (with ``ref`` set) or :class:`Skip`, one per planned ref, in plan order.

    Problems never raise here: each becomes a :class:`Skip` naming shard and reason, which the decode stage
    raises or counts (``on_error``).

    With ``rows=True`` a sample of a plain shard in memory comes as a :data:`~.plain_rows.Row` instead, built
    only if the consumer needs a ``RawSample`` (:func:`~.plain_rows.build_row`): the fused batch stage's way.

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
        max_member_bytes: int = MAX_MEMBER_BYTES,
        prefetch_bytes: int = DEFAULT_MEMORY_LIMIT,
        rows: bool = False,
    ) -> None:
        self.prefetch_bytes = prefetch_bytes
        self.rows = rows
        self.source = source
        self.refs = refs
        self.counters = counters
        self.policy = policy or RetryPolicy()
        self.cache = cache
        self.seed = seed
        self.max_member_bytes = max_member_bytes
        self._position = 0
        self._items: Iterator[Any] = iter(())
        # a shard split between workers is counted once, by the one that holds its first sample
        self._counts_for = {shard for shard, sample in refs if sample == 0}

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        self._close_all()
        self._position = int(initial_state[self.POSITION_KEY]) if initial_state else 0
        self._items = self._generate(self._position)

    def get_state(self) -> dict[str, Any]:
        return {self.POSITION_KEY: self._position}

    def next(self) -> RawSample | Skip | Row:
        item = next(self._items)
        self._position += 1
        return item

    def take(self, count: int) -> list[RawSample | Skip | Row]:
        """The next ``count`` items at once (fewer at the end)."""
        items = list(islice(self._items, count))
        self._position += len(items)
        return items

    def __iter__(self) -> Iterator[RawSample | Skip | Row]:
        return self

    __next__ = next

    def _close_all(self) -> None:
        for shard in getattr(self, "_open", {}).values():
            shard.close()
        self._open: dict[int, _OpenShard] = {}
        prefetcher: ShardPrefetcher | None = getattr(self, "_prefetcher", None)
        if prefetcher is not None:
            prefetcher.close()
        self._prefetcher: ShardPrefetcher | None = None

    def _start_prefetch(self, refs: list[SampleRef]) -> None:
        """Shards are read and verified one ahead of the one being decoded, and parsed here when opened."""
        order = list(dict.fromkeys(shard for shard, _ in refs))
        self._prefetcher = ShardPrefetcher(self._fetch, order, set(order))

    def _generate(self, start: int) -> Iterator[RawSample | Skip | Row]:
        refs = self.refs[start:]
        self._start_prefetch(refs)
        remaining = Counter(shard for shard, _ in refs)
        last_wanted: dict[int, int] = {}
        for shard, sample in refs:
            if sample > last_wanted.get(shard, -1):
                last_wanted[shard] = sample
        wanted = set(refs)
        held: dict[SampleRef, RawSample | Skip] = {}
        opened = self._open
        rows = self.rows
        try:
            for ref in refs:
                shard_index = ref[0]
                open_shard = opened.get(shard_index)
                if open_shard is None:
                    open_shard = self._open_shard(shard_index, last_wanted[shard_index])
                samples = open_shard.samples
                item: RawSample | Skip | Row
                if samples is not None:  # in memory: by position, nothing held
                    if rows and type(samples) is PlainRows and ref[1] < samples.length:
                        item = (samples, ref[1], ref)
                    else:
                        item = self._take(samples, ref)
                else:
                    if ref not in held:
                        self._read_until(ref, wanted, held)
                    item = held.pop(ref)
                    wanted.discard(ref)
                remaining[shard_index] -= 1
                if remaining[shard_index] == 0:
                    closing = opened.pop(shard_index, None)
                    if closing is not None:
                        closing.close()
                yield item
        finally:
            self._close_all()

    def _take(self, samples: Sequence[RawSample | TarProblem], ref: SampleRef) -> RawSample | Skip:
        """The planned sample of a shard parsed in memory: what walking to it (:meth:`_read_until`) would give."""
        shard_index, sample_index = ref
        item: RawSample | TarProblem | None
        if sample_index < len(samples):
            item = samples[sample_index]
            if type(item) is RawSample:
                item.ref = ref
                return item
        else:
            item = samples[-1] if samples else None
        where = self.source.describe(shard_index)
        if sample_index >= self.source.shards[shard_index].samples:
            return Skip(ref, f"{where}: sample {sample_index} beyond the shard", kind="shard shorter than listed")
        if isinstance(item, TarProblem) and item.fatal:
            return Skip(ref, f"{where}: {item.reason}", kind="truncated or corrupt tar")
        if isinstance(item, TarProblem) and sample_index < len(samples):  # one sample refused as a whole
            return Skip(ref, f"{where}: {item.reason}", item.key, "refused tar member")
        return Skip(ref, f"{where}: sample {len(samples)} is beyond the shard's end", kind="shard shorter than listed")

    def _read_until(self, ref: SampleRef, wanted: set[SampleRef], held: dict[SampleRef, RawSample | Skip]) -> None:
        shard_index, sample_index = ref
        shard = self._open[shard_index]
        while ref not in held:
            if shard.failure is not None:
                held[ref] = Skip(ref, shard.failure, kind=shard.failure_kind)
                return
            try:
                item = next(shard.items, None)
            except Exception as error:  # a large shard streamed from its temporary file: the rest is lost
                shard.failure = f"{self.source.describe(shard_index)}: {type(error).__name__}: {error}"
                continue
            if item is None:  # fewer samples than listed can only follow a fatal problem (checked on load)
                where = self.source.describe(shard_index)
                shard.failure = f"{where}: sample {shard.next_index} is beyond the shard's end"
                shard.failure_kind = "shard shorter than listed"
                continue
            if isinstance(item, TarProblem) and item.fatal:
                shard.failure = f"{self.source.describe(shard_index)}: {item.reason}"
                shard.failure_kind = "truncated or corrupt tar"
                continue
            position = (shard_index, shard.next_index)
            shard.next_index += 1
            if isinstance(item, TarProblem):  # one sample, refused as a whole: it is not trusted
                self.counters.add(f"refused_members:{item.reason.split(' ')[0]}")
                if position in wanted:
                    where = f"{self.source.describe(shard_index)}: {item.reason}"
                    held[position] = Skip(position, where, item.key, "refused tar member")
            elif position in wanted and position not in held:
                item.ref = position
                held[position] = item
        if sample_index >= self.source.shards[shard_index].samples:
            held[ref] = Skip(
                ref,
                f"{self.source.describe(shard_index)}: sample {sample_index} beyond the shard",
                kind="shard shorter than listed",
            )

    def _fetch(self, index: int) -> FetchedShard:
        rng = np.random.default_rng((self.seed, index, 7))
        return fetch_shard(
            self.source,
            index,
            policy=self.policy,
            rng=rng,
            counters=self.counters,
            cache=self.cache,
            memory_limit=self.prefetch_bytes,
            max_member_bytes=self.max_member_bytes,
        )

    def _open_shard(self, index: int, last_wanted: int) -> _OpenShard:
        """Shard ``index`` opened (or its failure recorded); refused members up to ``last_wanted`` are counted
        here for a shard in memory, as :meth:`_read_until` counts those it walks past for a streamed one."""
        try:
            shard = _OpenShard(self._prefetcher.get(index).parse(self.rows))  # type: ignore[union-attr]
            if shard.samples is not None and type(shard.samples) is not PlainRows:  # plain: no problem in it
                for item in shard.samples[: last_wanted + 1]:
                    if isinstance(item, TarProblem):
                        if item.fatal:
                            break
                        self.counters.add(f"refused_members:{item.reason.split(' ')[0]}")
        except ShardIntegrityError as error:  # checked before any sample of it was used: the whole shard skips
            if index in self._counts_for:
                self.counters.add("integrity_errors")
            shard = _OpenShard(None, str(error), "integrity error")
        except Exception as error:  # missing object, retry budget spent: every sample skips
            failure = f"{self.source.describe(index)}: {type(error).__name__}: {error}"
            shard = _OpenShard(None, failure)
        self._open[index] = shard
        return shard
