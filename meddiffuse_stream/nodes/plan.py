"""The epoch plan: which samples each rank and worker yields, in which order — a pure function of its inputs.

Everything the loader does is derived from ``(shard sizes, seed, epoch, rank, world_size, num_workers,
batch_size, drop_last, shuffle, buffer_size)``; nothing is drawn while streaming. That is what makes an epoch
reproducible, lets every rank know its batch count in advance (no DDP hang), and lets a restored loader skip
exactly the batches it already yielded without reading them again.

Layout of one epoch:

1. The split's shards are put in a seeded order (``seed + epoch``) and their samples laid end to end.
2. Each rank takes an equal, contiguous slice. Without ``drop_last`` the sequence is padded to a multiple of
   ``world_size`` by repeating its first samples (fewer than ``world_size`` repeats per epoch); with it, the
   remainder is dropped. With ``even=False`` (evaluation) the repeats all go to the epoch's last step instead,
   after every real sample of it in rank order: each rank takes ``batch_size`` samples per step from its own
   contiguous part, and the last step's samples are dealt rank by rank, ``ceil(rest / world_size)`` each, the
   repeats filling the last ranks' ends. Every rank still yields as many batches of the same sizes (per-batch
   collectives never wait on a rank that has finished), and gathering a step's rows rank by rank and keeping the
   first ``rest`` of the last step's (what ``accelerator.gather_for_metrics`` does) counts every sample once.
3. The rank's slice is cut into batches; batch counts per worker differ by at most one, and each worker takes a
   contiguous run of whole batches (so it reads at most two partial shards), the partial batch last.
4. Inside its run, a worker's order is a streaming shuffle buffer simulated on sample positions with its own
   generator (``seed * world_size + rank``, epoch, worker).
5. The rank yields the workers' batches round-robin; the partial batch, if any, comes last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..shardfmt.manifest import MAX_SPLIT_SAMPLES

__all__ = ["EpochPlan", "SampleRef", "buffer_order"]

SampleRef = tuple[int, int]  # (shard index in the dataset's shard list, sample index inside the shard)


def buffer_order(count: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The output order of a streaming shuffle buffer of ``buffer_size`` fed ``0..count-1``.

    Memory while streaming stays within ``buffer_size`` held samples, as with webdataset's shuffle, but the order
    is known before any byte is read.
    """
    if buffer_size <= 1 or count <= 1:
        return np.arange(count)
    # the buffer holds min(buffer_size, samples left) when each pick is made, so every pick is known up front;
    # the loop left only moves plain ints (it runs for every worker at every epoch start: ~0.8 µs a sample with
    # the buffer refilled and the pick computed inside it, ~0.25 µs so)
    held = np.minimum(buffer_size, count - np.arange(count))
    picks = (rng.random(count) * held).astype(np.int64).tolist()
    buffer = list(range(min(buffer_size, count)))
    feed = len(buffer)
    order: list[int] = []
    for pick in picks:
        order.append(buffer[pick])
        buffer[pick] = buffer[-1]
        buffer.pop()
        if feed < count:
            buffer.append(feed)
            feed += 1
    return np.asarray(order, dtype=np.int64)


def _check_sizes(shard_sizes: tuple[int, ...]) -> None:
    """Refuse what no epoch could hold before anything is allocated (the plan keeps an entry per sample)."""
    if any(not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0 for n in shard_sizes):
        raise ValueError("shard sizes must be non-negative integers")
    if sum(shard_sizes) > MAX_SPLIT_SAMPLES:
        raise ValueError(
            f"{sum(shard_sizes)} samples in one split is more than the {MAX_SPLIT_SAMPLES} an epoch plan can hold"
        )


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch, computed from the shard sizes and the loader's settings."""

    shard_sizes: tuple[int, ...]
    batch_size: int
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = False
    buffer_size: int = 1000
    even: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        _check_sizes(self.shard_sizes)

    @property
    def total(self) -> int:
        """Samples in the split."""
        return sum(self.shard_sizes)

    @property
    def tail(self) -> bool:
        """Whether the repeats sit in the last step, after its real samples (``even=False`` without drop_last)."""
        return not self.even and not self.drop_last

    def _tail_steps(self) -> tuple[int, int, int]:
        """``(steps, samples per rank before the last step, samples per rank in it)`` of the tail layout."""
        steps = math.ceil(self.total / (self.world_size * self.batch_size))
        if steps == 0:
            return 0, 0, 0
        body = self.batch_size * (steps - 1)
        return steps, body, math.ceil((self.total - self.world_size * body) / self.world_size)

    @property
    def last_step_samples(self) -> int:
        """Real samples in the epoch's last step across all ranks (the rest of it repeats): what to keep of it."""
        if not self.tail:
            return -1
        steps, body, _ = self._tail_steps()
        return self.total - self.world_size * body if steps else 0

    @property
    def per_rank(self) -> int:
        """Samples this rank yields this epoch, padding included."""
        if self.drop_last:
            samples = self.total // self.world_size
            return samples - samples % self.batch_size
        if self.tail:
            _, body, last = self._tail_steps()
            return body + last
        return math.ceil(self.total / self.world_size)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    @property
    def streams(self) -> int:
        """Parallel producers: the workers, or one when loading in the main process."""
        return max(1, self.num_workers)

    def shard_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.shard_sizes))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.shard_sizes))

    def _rank_positions(self, start: int, stop: int) -> np.ndarray:
        """Positions in the epoch's sample sequence of this rank's samples ``start:stop`` (``>= total``: repeats)."""
        index = np.arange(start, stop, dtype=np.int64)
        if not self.tail:
            return self.rank * self.per_rank + index
        _, body, last = self._tail_steps()
        final = self.world_size * body + self.rank * last + (index - body)  # the last step, dealt rank by rank
        return np.where(index < body, self.rank * body + index, final)

    def batch_counts(self) -> list[int]:
        """Batches each worker produces."""
        base, extra = divmod(self.num_batches, self.streams)
        return [base + (1 if w < extra else 0) for w in range(self.streams)]

    def schedule(self) -> list[int]:
        """The worker of each batch the rank yields, in order (round-robin; the partial batch is last)."""
        counts = self.batch_counts()
        order: list[int] = []
        for round_index in range(max(counts, default=0)):
            order.extend(w for w in range(self.streams) if counts[w] > round_index)
        return order

    def _partial_worker(self) -> int | None:
        """The worker placed last (its run ends the rank's part): the one with the partial batch, and in the tail
        layout the one yielding the last batch, which holds the repeats."""
        if self.num_batches == 0 or (self.per_rank % self.batch_size == 0 and not self.tail):
            return None
        return self.schedule()[-1]

    def worker_span(self, worker: int) -> tuple[int, int]:
        """``[start, stop)`` of ``worker``'s run inside the rank's slice."""
        counts = self.batch_counts()
        partial = self._partial_worker()
        layout = [w for w in range(self.streams) if w != partial] + ([partial] if partial is not None else [])
        start = 0
        for w in layout:
            size = counts[w] * self.batch_size
            if w == partial:
                size = self.per_rank - start
            if w == worker:
                return start, start + size
            start += size
        raise ValueError(f"worker {worker} is outside num_workers {self.num_workers}")

    def _worker_positions(self, worker: int) -> np.ndarray:
        """Positions in the epoch's sample sequence that ``worker`` yields, in yield order; ``>= total`` is padding."""
        start, stop = self.worker_span(worker)
        positions = self._rank_positions(start, stop)
        if self.shuffle:
            generator = np.random.default_rng((self.seed * self.world_size + self.rank, self.epoch, worker, 1))
            if self.tail:  # the repeats stay at the end of the run: the rank's last batch, after its real samples
                real, repeats = positions[positions < self.total], positions[positions >= self.total]
                return np.concatenate([real[buffer_order(len(real), self.buffer_size, generator)], repeats])
            positions = positions[buffer_order(len(positions), self.buffer_size, generator)]
        return positions

    def worker_share(self, worker: int) -> tuple[list[SampleRef], np.ndarray]:
        """:meth:`worker_refs` and :meth:`worker_padding` at once (the shuffle is simulated once)."""
        positions = self._worker_positions(worker)
        order = self.shard_order()
        offsets = np.concatenate([[0], np.cumsum([self.shard_sizes[i] for i in order])]).astype(np.int64)
        wrapped = positions % max(self.total, 1)  # wrap-around = the padding
        slots = np.searchsorted(offsets, wrapped, side="right") - 1
        shards = np.asarray(order, dtype=np.int64)[slots].tolist()  # whole arrays, then plain ints: a loop over
        samples = (wrapped - offsets[slots]).tolist()  # numpy scalars costs ~8 µs a sample at every epoch start
        return list(zip(shards, samples, strict=True)), positions >= self.total

    def worker_refs(self, worker: int) -> list[SampleRef]:
        """The samples ``worker`` yields this epoch, in yield order."""
        return self.worker_share(worker)[0]

    def worker_padding(self, worker: int) -> np.ndarray:
        """Per sample of :meth:`worker_refs`: whether it repeats a sample to even out the ranks (``is_padding``)."""
        return self._worker_positions(worker) >= self.total

    def layout(self) -> dict[str, int | bool]:
        """What the order of an epoch depends on apart from rank and epoch: what a run resumed mid-epoch must share."""
        return {
            "samples": self.total,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "buffer_size": self.buffer_size,
            "even": self.even,
        }

    def padded_count(self) -> int:
        """Samples this rank yields twice this epoch (padding to equal rank sizes)."""
        if self.drop_last:
            return 0
        return int((self._rank_positions(0, self.per_rank) >= self.total).sum())

    def skips(self, batches_done: int) -> list[int]:
        """Samples each worker has already delivered once the rank has yielded ``batches_done`` batches."""
        if not 0 <= batches_done <= self.num_batches:
            raise ValueError(f"batch position {batches_done} is outside this epoch's {self.num_batches} batches")
        done = [0] * self.streams
        for worker in self.schedule()[:batches_done]:
            done[worker] += 1
        spans = [self.worker_span(w) for w in range(self.streams)]
        return [min(d * self.batch_size, stop - start) for d, (start, stop) in zip(done, spans, strict=True)]
