"""The DataLoader / StatefulDataLoader surface: arguments, epoch semantics, padding marks, skip, uniform batches."""

from collections import Counter

import numpy as np
import pytest
import torch
from builders import noise_image, write_image
from loader_helpers import uneven_dataset

from meddiffuse_stream import MedDiffuseLoader


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("surface"), samples=103, shard_size=10))


def _keys(loader) -> list[list[str]]:
    return [list(batch["key"]) for batch in loader]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (None, TypeError, "always batches"),
        (2.0, TypeError, "got 2.0 \\(float\\)"),
        (True, TypeError, "bool"),
        (0, ValueError, "at least 1"),
        (-3, ValueError, "at least 1"),
    ],
)
def test_batch_size_must_be_a_positive_int(dataset, value, error, message):
    with pytest.raises(error, match=message):
        MedDiffuseLoader(dataset, value)


def test_dataloader_only_arguments_name_the_equivalent(dataset):
    with pytest.raises(TypeError, match=r"sampler=.*shuffle= and seed="):
        MedDiffuseLoader(dataset, 4, sampler=object())
    with pytest.raises(TypeError, match=r"generator=.*seed="):
        MedDiffuseLoader(dataset, 4, generator=torch.Generator())
    with pytest.raises(TypeError, match="unexpected keyword argument 'shufle'"):
        MedDiffuseLoader(dataset, 4, shufle=True)
    with pytest.raises(TypeError, match="same setting"):
        MedDiffuseLoader(dataset, 4, prefetch=2, prefetch_factor=4)
    with pytest.raises(TypeError, match="num_workers must be an int"):
        MedDiffuseLoader(dataset, 4, num_workers="2")


def test_dataloader_attributes(dataset):
    with MedDiffuseLoader(dataset, 8, num_workers=0, drop_last=True, prefetch_factor=3) as loader:
        assert (loader.batch_size, loader.num_workers, loader.drop_last) == (8, 0, True)
        assert len(loader.dataset) == 103 and len(loader) == 103 // 8
        stand_in = loader.batch_sampler  # DataLoader's attributes; iterating it names loader.skip(n)
        assert (stand_in.batch_size, stand_in.drop_last, len(stand_in)) == (8, True, 103 // 8)
        with pytest.raises(TypeError, match=r"call loader\.skip\(n\)"):
            iter(stand_in)
        loader.sampler.set_epoch(3)  # what Lightning calls at every epoch start
        assert loader.epoch == 3 and loader.sampler.epoch == 3


def test_each_iter_is_a_full_pass_and_the_next_epoch(dataset):
    """A partial pass does not leak into the next iter() (Lightning's sanity check takes 2 val batches first)."""
    with MedDiffuseLoader(dataset, 8, num_workers=2, as_dict=True, seed=2) as loader:
        iterator = iter(loader)
        partial = [next(iterator) for _ in range(2)]
        second = _keys(loader)
        assert len(second) == len(loader) and loader.epoch == 1
        assert [list(b["key"]) for b in partial] != second[:2]
        loader.set_epoch(0)
        assert _keys(loader)[:2] == [list(b["key"]) for b in partial], "set_epoch(0) gives epoch 0 again"


def test_set_epoch_between_iter_and_the_first_batch_applies_to_that_pass(dataset):
    """Lightning creates the iterator, then calls set_epoch, then takes batches."""
    with MedDiffuseLoader(dataset, 8, as_dict=True) as reference:
        reference.set_epoch(4)
        expected = _keys(reference)
    with MedDiffuseLoader(dataset, 8, as_dict=True) as loader:
        iterator = iter(loader)
        loader.set_epoch(4)
        assert [list(b["key"]) for b in iterator] == expected


def test_set_epoch_keeps_a_restored_position_of_that_epoch(dataset):
    with MedDiffuseLoader(dataset, 8, as_dict=True, num_workers=2) as loader:
        loader.set_epoch(1)
        epoch1 = _keys(loader)
        loader.set_epoch(1)
        iterator = iter(loader)
        for _ in range(5):
            next(iterator)
        state = loader.state_dict()
    with MedDiffuseLoader(dataset, 8, as_dict=True, num_workers=2) as restored:
        restored.load_state_dict(state)
        restored.set_epoch(1)  # frameworks call this after restoring: the position is kept
        assert _keys(restored) == epoch1[5:]
        restored.load_state_dict(state)
        restored.set_epoch(2)  # another epoch: a fresh pass of it
        assert len(_keys(restored)) == len(restored) and restored.epoch == 2


def test_any_ranks_state_resumes_every_rank(dataset):
    """Lightning and Accelerate save rank 0's loader state and load it on every rank."""

    def make(rank):
        return MedDiffuseLoader(dataset, 4, rank=rank, world_size=2, as_dict=True, num_workers=2, seed=5)

    expected = {}
    for rank in (0, 1):
        with make(rank) as loader:
            expected[rank] = _keys(loader)
    with make(0) as rank0:
        iterator = iter(rank0)
        for _ in range(4):
            next(iterator)
        state = rank0.state_dict()
    for rank in (0, 1):
        with make(rank) as loader:
            loader.load_state_dict(state)
            assert _keys(loader) == expected[rank][4:]


def test_skip_starts_the_next_pass_later_without_reading(dataset):
    with MedDiffuseLoader(dataset, 8, as_dict=True) as loader:
        full = _keys(loader)
    with MedDiffuseLoader(dataset, 8, as_dict=True) as loader:
        assert _keys(loader.skip(5)) == full[5:]
        assert loader.counters["yielded"] == sum(len(b) for b in full[5:]), "the skipped batches were not decoded"
        with pytest.raises(ValueError, match="has 13"):
            loader.skip(14)


def test_is_padding_marks_the_repeats_and_even_batches_false_puts_them_last(dataset):
    seen, padded, uneven = Counter(), Counter(), Counter()
    shapes = set()
    for rank in range(3):
        with MedDiffuseLoader(dataset, 8, rank=rank, world_size=3, as_dict=True, num_workers=2) as loader:
            for batch in loader:
                assert batch["is_padding"].dtype == torch.bool
                seen.update(batch["key"])
                padded.update(k for k, p in zip(batch["key"], batch["is_padding"].tolist(), strict=True) if p)
        with MedDiffuseLoader(
            dataset, 8, rank=rank, world_size=3, as_dict=True, even_batches=False, num_workers=2
        ) as loader:
            batches = [b for b in loader]
            shapes.add(tuple(len(b["key"]) for b in batches))
            for b in batches:
                uneven.update(k for k, p in zip(b["key"], b["is_padding"].tolist(), strict=True) if not p)
            assert not any(b["is_padding"].any() for b in batches[:-1]), "repeats only in the last step"
            marks = batches[-1]["is_padding"].tolist()
            assert marks == sorted(marks), "and there after the real samples"
    assert sum(padded.values()) == 2 and all(seen[k] == 2 for k in padded), "the marked samples are the repeats"
    assert set(uneven.values()) == {1} and len(uneven) == 103, "every sample once, apart from the marked repeats"
    assert len(shapes) == 1, "even_batches=False: every rank yields the same batch shapes (no collective hangs)"


def test_dataloader_keywords_keep_their_meaning(dataset, tmp_path):
    def collate(samples):
        return torch.stack([s["image"] for s in samples]), [s["key"] for s in samples]

    with (
        MedDiffuseLoader(dataset, 8, collate_fn=collate, shuffle=False) as custom,
        MedDiffuseLoader(dataset, 8, shuffle=False) as plain,
    ):
        images, keys = next(iter(custom))
        assert torch.equal(images, next(iter(plain))[0]) and len(keys) == 8
    marks = tmp_path / "init"
    marks.mkdir()
    with MedDiffuseLoader(
        dataset, 8, num_workers=2, worker_init_fn=_MarkWorker(marks), persistent_workers=False, as_dict=True
    ) as loader:
        assert len(_keys(loader)) == len(loader)
        assert not loader.graph.workers.pool.started, "persistent_workers=False: workers end with the pass"
        assert len(_keys(loader)) == len(loader)
    assert sorted(p.name for p in marks.iterdir()) == ["0", "1"]
    with pytest.warns(UserWarning, match="CUDA is not available"):
        MedDiffuseLoader(dataset, 8, pin_memory=True).close()


def _mirror(image):
    return image.flip(-1)


def test_stages_run_in_the_workers_of_the_one_line_loader(dataset):
    import functools

    from meddiffuse_stream.nodes import ImageMap

    with (
        MedDiffuseLoader(
            dataset, 8, shuffle=False, num_workers=2, stages=[functools.partial(ImageMap, fn=_mirror)]
        ) as mirrored,
        MedDiffuseLoader(dataset, 8, shuffle=False, num_workers=2) as plain,
    ):
        assert torch.equal(next(iter(mirrored))[0], next(iter(plain))[0].flip(-1))


def _stall(sample):
    import time

    time.sleep(3)
    return sample


def test_timeout_bounds_the_wait_for_a_batch(dataset):
    with (
        MedDiffuseLoader(dataset, 4, num_workers=1, worker_method="thread", transform=_stall, timeout=0.5) as loader,
        pytest.raises(TimeoutError, match=r"decode worker 0 \(thread\) sent no batch in 0.5 s .*epoch 0, batch 0"),
    ):
        next(iter(loader))


class _MarkWorker:
    """A worker_init_fn that pickles (a closure would not with spawned workers)."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, worker_id: int) -> None:
        (self.folder / str(worker_id)).write_text("")


def test_rank_and_world_size_are_read_when_an_epoch_starts(dataset, monkeypatch):
    """Built before the process group (or RANK) exists, the loader shards by the rank it finds when iterated."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with MedDiffuseLoader(dataset, 4, num_workers=2, as_dict=True) as loader:
        assert len(loader) == 26
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        keys = _keys(loader)
        assert loader.plan.rank == 1 and len(keys) == len(loader) == 13
    with MedDiffuseLoader(dataset, 4, rank=1, world_size=2, as_dict=True, num_workers=2) as explicit:
        assert _keys(explicit) == keys


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Sizes 12x20, 16x16 and 9x7, grey and RGB, 8- and 16-bit: what webdatasets in the wild hold."""
    from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset

    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    shapes = [(12, 20, 0), (16, 16, 3), (9, 7, 0), (16, 16, 0)]
    for index in range(12):
        height, width, channels = shapes[index % 4]
        write_image(root / "in" / "ab"[index % 2] / f"i{index:02d}.png", noise_image(rng, height, width, channels))
    write_image(root / "in" / "a" / "deep.png", noise_image(rng, 10, 10, 0, np.uint16))
    convert_dataset(
        ImageFolderSource(), str(root / "in"), str(root / "ds"), ConvertOptions(splits={"train": 1.0}), progress=False
    )
    return str(root / "ds")


@pytest.mark.parametrize("mode", ["crop", "letterbox"])
def test_resize_and_channels_make_uniform_batches(mixed, mode):
    with MedDiffuseLoader(mixed, 13, shuffle=False) as loader, pytest.raises(ValueError, match="pass resize="):
        next(iter(loader))
    with MedDiffuseLoader(
        mixed, 13, shuffle=False, resize=(8, 10), resize_mode=mode, channels=3, num_workers=2
    ) as loader:
        images, _ = next(iter(loader))
    assert images.shape == (13, 3, 8, 10) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    if mode == "letterbox":
        assert (images[..., 0] == 0).any(), "letterboxing pads with zeros"
    with MedDiffuseLoader(mixed, 13, shuffle=False, resize=8, channels=1) as grey:
        assert next(iter(grey))[0].shape == (13, 1, 8, 8)
    with pytest.raises(ValueError, match="channels must be 1, 3"):
        MedDiffuseLoader(mixed, 4, channels=2)
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        MedDiffuseLoader(mixed, 4, resize=8, resize_mode="stretch")


def test_resize_keeps_what_it_should():
    from meddiffuse_stream.nodes.conform import convert_channels, resize_image

    wide = np.zeros((1, 10, 20), dtype=np.uint8)
    wide[:, :, :5] = 255  # a bright left quarter
    assert resize_image(wide, (10, 10), "crop")[0, :, 0].max() == 0, "crop cuts the borders"
    boxed = resize_image(wide, (10, 10), "letterbox")
    assert boxed[0, 5, 0] == 255 and boxed[0, 0].max() == 0, "letterbox keeps everything, pads top and bottom"
    rgb = np.stack([np.full((2, 2), v, dtype=np.uint8) for v in (255, 0, 0)])
    assert convert_channels(rgb, 1)[0, 0, 0] == 76  # ITU-R 601 luma of pure red, as PIL's "L"
    assert resize_image(np.arange(4, dtype=np.uint16).reshape(1, 2, 2) * 20000, (4, 4)).dtype == np.uint16
