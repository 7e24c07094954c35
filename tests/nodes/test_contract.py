"""One save/load-state contract (mid-epoch, end of epoch, next pass), run over every node of the graph."""

import dataclasses
import functools

import numpy as np
import pytest
import torch
from loader_helpers import check_state_contract, keys_of, uneven_dataset
from torchdata.nodes import Loader

from meddiffuse_stream.counters import Counters
from meddiffuse_stream.nodes import (
    Batch,
    Conform,
    ConformOptions,
    Decode,
    DecodeBatch,
    DecodeOptions,
    DeviceStage,
    EpochPlan,
    EpochSource,
    Filter,
    ImageMap,
    Map,
    ReadSamples,
    ToTorch,
    WorkerChain,
    WorkerOptions,
    Workers,
    open_dataset,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return open_dataset(str(uneven_dataset(tmp_path_factory.mktemp("c"))), "train")


@pytest.fixture(scope="module")
def plan(source):
    return EpochPlan(tuple(s.samples for s in source.shards), 8, seed=3, num_workers=2, buffer_size=16)


def _epochs(source, workers=2, **settings):
    return EpochSource(
        tuple(s.samples for s in source.shards),
        8,
        seed=3,
        num_workers=workers,
        buffer_size=16,
        rank=0,
        world_size=1,
        **settings,
    )


def _brighter(image):
    return (image * 0.5).clamp(0, 1)


def _odd_keys(sample):
    return int(sample["key"][-3:]) % 2 == 1


def _read(source, plan):
    return ReadSamples(source, plan, 1, counters=Counters())


def test_epoch_source_contract(source):
    check_state_contract(lambda: _epochs(source), [0, 1])


def test_reader_contract(source, plan):
    check_state_contract(lambda: _read(source, plan), [0, 5, len(plan.worker_refs(1))])


@pytest.mark.parametrize(
    "stage",
    [
        lambda up, src: Decode(up, src, DecodeOptions(num_classes=2)),
        lambda up, src: Conform(Decode(up, src, DecodeOptions()), ConformOptions.of(5, "letterbox", 3)),
        lambda up, src: Map(Decode(up, src, DecodeOptions()), lambda s: dict(s, label=1 - s["label"])),
        lambda up, src: ImageMap(Decode(up, src, DecodeOptions()), _brighter),
        lambda up, src: Filter(Decode(up, src, DecodeOptions()), _odd_keys),
    ],
    ids=["decode", "conform", "map", "image-map", "filter"],
)
def test_per_sample_stage_contract(source, plan, stage):
    check_state_contract(lambda: stage(_read(source, plan), source), [0, 3, len(plan.worker_refs(1))])


def test_batch_contract(source, plan):
    make = lambda: Batch(Filter(Decode(_read(source, plan), source, DecodeOptions()), _odd_keys), 8)  # noqa: E731
    check_state_contract(make, [0, 2, 6])  # worker 1 has 6 of the 13 batches


def test_decode_batch_contract(source, plan):
    make = lambda: DecodeBatch(_read(source, plan), source, DecodeOptions(), 8)  # noqa: E731
    check_state_contract(make, [0, 2, 6])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-sample-stage"])
@pytest.mark.parametrize(("workers", "method"), [(0, "process"), (2, "thread"), (2, "process")])
def test_workers_contract_and_next_epoch(source, workers, method, fused):
    stages = () if fused else (functools.partial(ImageMap, fn=_brighter),)
    chain = WorkerChain(source, DecodeOptions(num_classes=2), stages)
    assert chain.fused == fused

    def make():
        return Workers(_epochs(source, workers), chain, options=WorkerOptions(method=method))

    check_state_contract(make, [0, 3, 13])
    node = make()
    node.reset(None)
    epoch0 = [keys_of(b) for b in node]
    node.reset(None)
    epoch1 = [keys_of(b) for b in node]
    flat = [sorted(k for batch in epoch for k in batch) for epoch in (epoch0, epoch1)]
    assert node.position == (1, 13) and epoch1 != epoch0 and flat[0] == flat[1]
    node.close()


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "own-thread"])
def test_to_torch_and_device_stage_contract(source, threaded):
    """The threaded path is CUDA's (stage in a thread of its own, batches handed over ahead) minus the streams."""
    from meddiffuse_stream.augment import AugmentStage

    chain = WorkerChain(source, DecodeOptions(num_classes=2))

    def make():
        stage = AugmentStage("mixup", 2, seed=1)
        return DeviceStage(ToTorch(Workers(_epochs(source, 0), chain)), stage, threaded=threaded)

    check_state_contract(make, [0, 4, 13])
    inline, threads = make(), make()
    threads.threaded = True
    inline.reset(None)
    threads.reset(None)
    for a, b in zip(inline, threads, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
    threads.close()


def test_a_failing_device_stage_names_itself_and_close_does_not_wait(source):
    import threading

    class Failing:
        device = "cpu"
        method = "broken-method"

        def __call__(self, batch, details=True):
            raise ValueError("no such thing")

        def state_dict(self):
            return {}

    chain = WorkerChain(source, DecodeOptions(num_classes=2))
    node = DeviceStage(ToTorch(Workers(_epochs(source, 0), chain)), Failing(), threaded=True)
    node.reset(None)
    with pytest.raises(RuntimeError, match=r"device stage \(broken-method\) failed: no such thing"):
        next(node)

    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    class Slow(Failing):
        def __call__(self, batch, details=True):
            entered.set()
            release.wait(timeout=60)  # busy until the test lets it go
            finished.set()
            return batch

    node = DeviceStage(ToTorch(Workers(_epochs(source, 0), chain)), Slow(), threaded=True)
    node.reset(None)
    node._start_runner().submit({"image": torch.zeros(1)})
    assert entered.wait(timeout=60)  # the stage's thread is now busy with that batch
    node.close()
    assert not finished.is_set(), "close() waited for the batch the stage was on"
    release.set()
    assert finished.wait(timeout=60)


def test_torchdata_loader_on_top_moves_on_each_epoch_and_resumes_exactly(source):
    """Under torchdata.nodes.Loader every iteration is the next epoch (it used to repeat epoch 0 forever) and a
    state from the middle of an epoch resumes exactly, then goes on to the next epoch."""
    chain = WorkerChain(source, DecodeOptions(num_classes=2))
    root = ToTorch(Workers(_epochs(source, 2), chain, options=WorkerOptions(method="thread")))
    loader = Loader(root)
    epochs = [[keys_of(b) for b in loader] for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2] and len({len(e) for e in epochs}) == 1
    partial = Loader(ToTorch(Workers(_epochs(source, 2), chain, options=WorkerOptions(method="thread"))))
    iterator = iter(partial)
    for _ in range(5):
        next(iterator)
    state = partial.state_dict()
    resumed = Loader(ToTorch(Workers(_epochs(source, 2), chain, options=WorkerOptions(method="thread"))))
    resumed.load_state_dict(state)
    assert [keys_of(b) for b in resumed] == epochs[0][5:]
    assert [keys_of(b) for b in resumed] == epochs[1]


def test_resume_mid_epoch_with_another_world_size_is_refused_at_the_end_allowed(source):
    chain = WorkerChain(source, DecodeOptions())
    node = Workers(_epochs(source, 0), chain)
    node.reset(None)
    next(node)
    mid = node.state_dict()
    for _ in node:
        pass
    end = node.state_dict()
    other = Workers(
        EpochSource(tuple(s.samples for s in source.shards), 8, seed=3, buffer_size=16, rank=1, world_size=2), chain
    )
    with pytest.raises(ValueError, match=r"world_size: saved 1, now 2"):
        other.reset(mid)
    other.reset(end)
    assert list(other) == [], "a state at an epoch's end is an ended epoch in any layout"
    other.reset(None)
    assert other.position[0] == 1 and len(list(other)) == other.plan.num_batches


def test_filter_drops_are_skipped_and_filled(source, plan):
    counters = Counters()
    node = Batch(
        Filter(Decode(_read(source, plan), source, DecodeOptions()), _odd_keys, kind="even key"), 8, counters=counters
    )
    chunks = list(node)
    planned = len(plan.worker_refs(1))
    assert sum(len(c["key"]) for c in chunks) == planned, "batch sizes do not change"
    assert counters["yielded"] + counters["skipped"] == planned and counters["skipped:even key"] > 0
    padding = np.concatenate([c["is_padding"] for c in chunks])
    assert padding.sum() == counters["padded"] == counters["skipped"]
    assert all(int(k[-3:]) % 2 == 1 for c in chunks for k in c["key"])


def test_plan_marks_rank_padding(source):
    sizes = tuple(s.samples for s in source.shards)
    marked = sum(
        int(EpochPlan(sizes, 8, rank=r, world_size=3, num_workers=2).worker_padding(w).sum())
        for r in range(3)
        for w in range(2)
    )
    assert marked == (-sum(sizes)) % 3 == 2
    tail = dataclasses.replace(EpochPlan(sizes, 8, rank=2, world_size=3), even=False)  # repeats in the last step
    assert tail.worker_padding(0)[-tail.padded_count() :].all() and not tail.worker_padding(0)[:-8].any()
