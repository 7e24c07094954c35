"""The epoch plan as a pure function: coverage, equal batch counts, padding, skips, determinism."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meddiffuse_stream.nodes.plan import EpochPlan, buffer_order


def _rank_batches(plan: EpochPlan) -> list[list[tuple[int, int]]]:
    """The batches a rank yields, reassembled from the workers' refs and the schedule."""
    refs = {w: plan.worker_refs(w) for w in range(plan.streams)}
    taken = dict.fromkeys(refs, 0)
    batches = []
    for worker in plan.schedule():
        size = min(plan.batch_size, len(refs[worker]) - taken[worker])
        batches.append(refs[worker][taken[worker] : taken[worker] + size])
        taken[worker] += size
    assert all(taken[w] == len(refs[w]) for w in refs), "every planned sample is in some batch"
    return batches


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=9),
    world=st.integers(1, 3),
    workers=st.integers(0, 2),
    batch=st.integers(1, 9),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_every_sample_once_per_epoch_and_equal_batches_on_every_rank(
    sizes, world, workers, batch, drop_last, shuffle, epoch
):
    seen: Counter = Counter()
    counts = set()
    for rank in range(world):
        plan = EpochPlan(
            tuple(sizes),
            batch,
            seed=5,
            epoch=epoch,
            rank=rank,
            world_size=world,
            num_workers=workers,
            shuffle=shuffle,
            drop_last=drop_last,
            buffer_size=7,
        )
        batches = _rank_batches(plan)
        counts.add(len(batches))
        assert len(batches) == plan.num_batches
        assert all(len(b) == batch for b in batches[:-1]) and (not batches or 0 < len(batches[-1]) <= batch)
        for b in batches:
            seen.update(b)
    assert len(counts) == 1, "ranks disagree on the number of batches: DDP would hang"
    total = sum(sizes)
    every = {(s, i) for s, size in enumerate(sizes) for i in range(size)}
    assert set(seen) <= every
    if drop_last:
        assert all(v == 1 for v in seen.values()) and total - len(seen) < world * batch + world
    else:
        assert set(seen) == every
        assert (
            sum(seen.values()) - total
            == sum(EpochPlan(tuple(sizes), batch, rank=r, world_size=world).padded_count() for r in range(world))
            < world
        )


def test_same_seed_same_order_other_epoch_other_order():
    make = lambda **kw: EpochPlan((50, 30, 20), 8, seed=1, num_workers=2, **kw).worker_refs(0)  # noqa: E731
    assert make(epoch=0) == make(epoch=0)
    assert make(epoch=0) != make(epoch=1)
    assert EpochPlan((50, 30, 20), 8, seed=2, num_workers=2).worker_refs(0) != make(epoch=0)


def test_skips_follow_the_schedule():
    plan = EpochPlan((10, 10, 7), 4, num_workers=2)
    assert plan.schedule() == [0, 1, 0, 1, 0, 1, 0]  # 7 batches, the partial one last
    assert plan.skips(0) == [0, 0] and plan.skips(3) == [8, 4] and plan.skips(7) == [15, 12]


def test_buffer_order_is_a_permutation_local_to_its_buffer():
    import numpy as np

    order = buffer_order(500, 10, np.random.default_rng(0))
    assert sorted(order) == list(range(500))
    assert all(order[t] < t + 10 for t in range(500)), "a streaming buffer can only emit what it has read"


def _streaming_buffer(count: int, size: int, draws) -> list[int]:
    """A shuffle buffer as a stream runs it: fill to ``size``, swap a drawn slot with the last, emit the last."""
    buffer: list[int] = []
    feed, out = 0, []
    for draw in draws:
        while feed < count and len(buffer) < size:
            buffer.append(feed)
            feed += 1
        pick = int(draw * len(buffer))
        buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
        out.append(buffer.pop())
    return out


@pytest.mark.parametrize(("count", "size"), [(2, 2), (10, 3), (10, 100), (1000, 7), (5000, 1000), (999, 2)])
def test_buffer_order_is_what_a_streaming_buffer_emits_for_the_same_draws(count, size):
    import numpy as np

    draws = np.random.default_rng(count).random(count)
    assert buffer_order(count, size, np.random.default_rng(count)).tolist() == _streaming_buffer(count, size, draws)


def test_absurd_sizes_are_refused_before_anything_is_allocated():
    from meddiffuse_stream.shardfmt.manifest import MAX_SPLIT_SAMPLES

    for sizes in ((10**12,), (MAX_SPLIT_SAMPLES, 1), (-5, 3), (2.5,)):
        with pytest.raises(ValueError, match=r"plan can hold|non-negative integers"):
            EpochPlan(sizes, 4)  # an allocation of 10**12 entries would fail with MemoryError, not this


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=9),
    world=st.integers(1, 4),
    workers=st.integers(0, 3),
    batch=st.integers(1, 9),
    shuffle=st.booleans(),
)
def test_even_false_keeps_steps_in_step_and_its_repeats_at_the_end_of_the_last_step(
    sizes, world, workers, batch, shuffle
):
    """even=False: every rank yields the same batches (count and sizes) — a per-batch collective never waits on a
    finished rank nor gathers unequal shapes — and the repeats are the last rows of the last step in rank order,
    so a rank-by-rank gather that keeps ``last_step_samples`` of the last step counts every sample once."""
    plans = [
        EpochPlan(
            tuple(sizes), batch, seed=3, rank=r, world_size=world, num_workers=workers, shuffle=shuffle, even=False
        )
        for r in range(world)
    ]
    per_rank = [_rank_batches(p) for p in plans]
    assert len({tuple(len(b) for b in batches) for batches in per_rank}) == 1, "ranks yield other batch shapes"
    padding = [
        [list(p.worker_padding(w)) for w in range(p.streams)] for p in plans
    ]  # per rank, per worker, in yield order
    steps = len(per_rank[0])
    gathered: list = []
    for step in range(steps):
        rows = []
        for rank, plan in enumerate(plans):
            worker = plan.schedule()[step]
            number = plan.schedule()[:step].count(worker)
            marks = padding[rank][worker][number * batch : number * batch + len(per_rank[rank][step])]
            rows += list(zip(per_rank[rank][step], marks, strict=True))
        if step == steps - 1:
            keep = plans[0].last_step_samples
            assert not any(mark for _, mark in rows[:keep]) and all(mark for _, mark in rows[keep:])
            rows = rows[:keep]
        else:
            assert not any(mark for _, mark in rows), "a repeat before the last step"
        gathered += [ref for ref, _ in rows]
    every = [(s, i) for s, size in enumerate(sizes) for i in range(size)]
    assert sorted(gathered) == sorted(every), "gathered rank by rank, every sample exactly once"
    assert sum(p.padded_count() for p in plans) < world
