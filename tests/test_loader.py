"""MedDiffuseLoader's guarantees on uneven shards, world sizes 1-3 and worker counts 0-2."""

from collections import Counter

import pytest
import torch
from loader_helpers import uneven_dataset

from meddiffuse_stream import MedDiffuseLoader


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("loader"), samples=103, shard_size=10))


def _epoch_keys(loader) -> list[list[str]]:
    return [list(batch["key"]) for batch in loader]


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_exactly_once_per_epoch_with_equal_batch_counts(dataset, world, workers):
    seen = Counter()
    batch_counts = set()
    for rank in range(world):
        with MedDiffuseLoader(
            dataset,
            8,
            num_workers=workers,
            rank=rank,
            world_size=world,
            as_dict=True,
            worker_method="thread" if workers == 1 else "process",
        ) as loader:
            batches = _epoch_keys(loader)
            assert len(batches) == len(loader)
            batch_counts.add(len(batches))
            seen.update(k for b in batches for k in b)
    assert len(batch_counts) == 1
    assert len(seen) == 103 and sum(seen.values()) - 103 == (-103) % world  # the documented padding


def test_drop_last_drops_instead_of_padding(dataset):
    seen = Counter()
    for rank in range(2):
        with MedDiffuseLoader(dataset, 8, rank=rank, world_size=2, drop_last=True, as_dict=True) as loader:
            batches = _epoch_keys(loader)
            assert all(len(b) == 8 for b in batches) and len(batches) == 6
            seen.update(k for b in batches for k in b)
    assert max(seen.values()) == 1 and len(seen) == 96


def test_same_seed_same_batches_other_epoch_other_order(dataset):
    first = MedDiffuseLoader(dataset, 8, seed=4, as_dict=True, num_workers=2)
    second = MedDiffuseLoader(dataset, 8, seed=4, as_dict=True, num_workers=2)
    epoch0 = _epoch_keys(first)
    assert epoch0 == _epoch_keys(second)
    epoch1 = _epoch_keys(first)  # iterating again goes on to the next epoch
    assert (
        first.epoch == 1
        and epoch1 != epoch0
        and sorted(k for b in epoch1 for k in b) == sorted(k for b in epoch0 for k in b)
    )
    second.set_epoch(1)
    assert _epoch_keys(second) == epoch1
    first.close()
    second.close()


@pytest.mark.parametrize("method", ["thread", "process"])
def test_workers_read_ahead_and_drop_it_when_the_caller_goes_elsewhere(dataset, method):
    """Workers start on epoch 0 when the loader is built and on epoch e+1 as soon as epoch e's last batch is handed
    over; a set_epoch elsewhere drops what was read ahead. The batches are always those of a fresh loader."""
    settings = dict(seed=4, as_dict=True, num_workers=2, worker_method=method)

    def fresh(epoch: int) -> list[list[str]]:
        with MedDiffuseLoader(dataset, 8, **settings) as loader:
            loader.set_epoch(epoch)
            return _epoch_keys(loader)

    with MedDiffuseLoader(dataset, 8, **settings) as loader:
        generation = lambda: loader.graph.workers.pool.generation  # noqa: E731 - one command to the workers each
        assert generation() == 1, "the workers were set to epoch 0 when the loader was built"
        assert _epoch_keys(loader) == fresh(0) and generation() == 2  # ... and to epoch 1 with epoch 0's last batch
        assert _epoch_keys(loader) == fresh(1) and generation() == 3  # epoch 1 took what was read ahead
        loader.set_epoch(7)
        assert _epoch_keys(loader) == fresh(7) and generation() == 5  # epoch 2's read-ahead was dropped


@pytest.mark.parametrize(("workers", "method"), [(0, "process"), (2, "thread"), (2, "process")])
@pytest.mark.parametrize("stop", [1, 6, 13])
def test_restored_loader_yields_exactly_what_the_uninterrupted_one_yields(dataset, workers, method, stop):
    world = 2
    for rank in range(world):
        kwargs = dict(num_workers=workers, worker_method=method, rank=rank, world_size=world, as_dict=True, seed=9)
        with MedDiffuseLoader(dataset, 4, **kwargs) as reference:
            expected = _epoch_keys(reference) + _epoch_keys(reference) + _epoch_keys(reference)  # three epochs
        with MedDiffuseLoader(dataset, 4, **kwargs) as interrupted:
            iterator = iter(interrupted)
            for _ in range(stop):
                next(iterator)
            state = interrupted.state_dict()
        with MedDiffuseLoader(dataset, 4, **kwargs) as restored:
            restored.load_state_dict(state)
            rest = _epoch_keys(restored) + _epoch_keys(restored)  # the rest of that epoch, then the next one
        # a state taken after an epoch's last batch (stop 13) resumes at the next epoch's first batch
        assert len(rest) == (26 - stop if stop < 13 else 26) and rest == expected[stop : stop + len(rest)]


def test_state_from_other_settings_is_refused_mid_epoch_and_taken_at_an_epoch_boundary(dataset):
    """The samples left of an epoch depend on its layout: mid-epoch it must match; at a boundary any layout goes."""
    with MedDiffuseLoader(dataset, 4, num_workers=0, as_dict=True) as loader:
        start = loader.state_dict()
        iterator = iter(loader)
        next(iterator)
        middle = loader.state_dict()
        list(iterator)
        end = loader.state_dict()
    with MedDiffuseLoader(dataset, 4, num_workers=2, as_dict=True) as other:
        with pytest.raises(ValueError, match=r"num_workers: saved 0, now 2.*epoch's end"):
            other.load_state_dict(middle)
        other.load_state_dict(start)
        assert other.epoch == 0 and len(_epoch_keys(other)) == len(other)
        other.load_state_dict(end)
        assert other.epoch == 1, "a state taken at an epoch's end goes on with the next epoch"


def test_tuples_and_dicts_are_float_batches(dataset):
    with MedDiffuseLoader(dataset, 16, shuffle=False) as loader:
        images, labels = next(iter(loader))
    assert images.dtype == torch.float32 and images.shape == (16, 1, 8, 8) and 0 <= images.min() <= images.max() <= 1
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}


def test_transform_hook_sees_tensors(dataset):
    def flip(sample):
        return dict(sample, image=sample["image"].flip(-1))

    with (
        MedDiffuseLoader(dataset, 5, shuffle=False, transform=flip) as flipped,
        MedDiffuseLoader(dataset, 5, shuffle=False) as plain,
    ):
        assert torch.equal(next(iter(flipped))[0], next(iter(plain))[0].flip(-1))


def test_rank_and_world_size_default_from_the_environment(dataset, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with MedDiffuseLoader(dataset, 4) as loader:
        assert (loader.plan.rank, loader.plan.world_size) == (1, 3)


def test_augment_by_name_needs_models_only_where_the_method_does(dataset):
    with pytest.raises(ValueError, match=r"needs a saliency teacher.*AugmentStage"):
        MedDiffuseLoader(dataset, 4, augment="meddiffusemix")
    with MedDiffuseLoader(dataset, 4, augment="mixup", seed=1) as loader:
        _, targets = next(iter(loader))
    assert targets.shape == (4, 2) and torch.allclose(targets.sum(dim=1), torch.ones(4))


def test_demo_roi_and_meta_come_with_as_dict(tmp_path):
    from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset

    convert_dataset(
        DemoSource(n=40, size=16), None, str(tmp_path / "d"), ConvertOptions(splits={"train": 1.0}), progress=False
    )
    with MedDiffuseLoader(str(tmp_path / "d"), 8, as_dict=True) as loader:
        batch = next(iter(loader))
    assert batch["roi"].shape == (8, 1, 16, 16) and set(batch["roi"].unique().tolist()) <= {0.0, 1.0}
    assert all((m["label"] == 1) == bool(r.any()) for m, r in zip(batch["meta"], batch["roi"], strict=True))


def test_brace_pattern_reads_the_same_samples_as_the_dataset_folder(dataset):
    import json
    from pathlib import Path

    shards = json.loads((Path(dataset) / "dataset.json").read_text())["shards"]
    pattern = f"{dataset}/train/train-{{000000..{len(shards) - 1:06d}}}.tar"
    with (
        MedDiffuseLoader(pattern, 8, shuffle=False, as_dict=True) as by_pattern,
        MedDiffuseLoader(dataset, 8, shuffle=False, as_dict=True) as by_folder,
    ):
        assert len(by_pattern) == len(by_folder)
        assert _epoch_keys(by_pattern) == _epoch_keys(by_folder)


def test_augment_stage_in_the_loader_resumes_exactly(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "augment"))
    from test_stage import Energy, Nudge

    from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset
    from meddiffuse_stream.augment import AugmentStage

    convert_dataset(
        DemoSource(n=48, size=16), None, str(tmp_path / "d"), ConvertOptions(splits={"train": 1.0}), progress=False
    )

    def make():
        stage = AugmentStage(
            "meddiffusemix",
            2,
            teacher=Energy(),
            saliency_method="gradients",
            generator=Nudge(),
            variant_cache=str(tmp_path / "cache"),
            seed=5,
        )
        return MedDiffuseLoader(str(tmp_path / "d"), 8, as_dict=True, augment=stage, num_workers=2, seed=1)

    with make() as reference:
        expected = [b["image"] for b in reference]
        assert reference.augment.counters["batches"] == len(expected) == 6
    with make() as interrupted:
        iterator = iter(interrupted)
        first = [next(iterator) for _ in range(2)]
        assert first[0]["mix_weight"].shape == (8, 1, 16, 16) and "saliency" in first[0]
        state = interrupted.state_dict()
    with make() as restored:
        restored.load_state_dict(state)
        rest = [b["image"] for b in restored]
    assert all(torch.equal(a, b) for a, b in zip(rest, expected[2:], strict=True))
