"""What a batch is: a ``collate_fn``'s result exactly as it made it; a tuple batch never shows the copies that stand
in for filtered or skipped samples (a dict batch shows them marked), while the rank repeats stay in both."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from loader_helpers import uneven_dataset

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.nodes import Filter

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("batches"), samples=103, shard_size=10))


def own_batch(samples: list[dict]) -> dict:
    return {"pixels": np.stack([s["image"].numpy() for s in samples]), "names": [s["key"] for s in samples]}


@pytest.mark.parametrize("workers", [0, 2])
def test_collate_fn_output_passes_untouched(dataset, workers):
    with MedDiffuseLoader(dataset, 8, num_workers=workers, collate_fn=own_batch, shuffle=False) as loader:
        batches = list(loader)
    assert all(set(b) == {"pixels", "names"} for b in batches), "no key added (it gained 'position')"
    assert all(type(b["pixels"]) is np.ndarray and b["pixels"].dtype == np.float32 for b in batches)
    assert sum(len(b["names"]) for b in batches) == 103


def _is_a(sample: dict) -> bool:
    return sample["key"].startswith("a_")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_filter_in_tuple_mode_leaves_dropped_samples_out_instead_of_copying_others(dataset, workers):
    stages = [functools.partial(Filter, predicate=_is_a)]
    with MedDiffuseLoader(dataset, 12, num_workers=workers, stages=stages, as_dict=True, seed=2) as loader:
        dicts = list(loader)
        expected = [b["image"][~b["is_padding"]] for b in dicts]
        assert all(len(b["key"]) in (12, 103 % 12) for b in dicts), "dict batches: filled and marked, as before"
        kept = loader.counters["yielded"]
    with MedDiffuseLoader(dataset, 12, num_workers=workers, stages=stages, seed=2) as loader:
        tuples = list(loader)
        assert len(tuples) == len(loader) == len(dicts), "a batch per planned batch: ranks stay in step"
    assert sum(len(labels) for _, labels in tuples) == kept == 51
    for (images, labels), wanted in zip(tuples, expected, strict=True):
        assert torch.equal(images, wanted) and len(labels) == len(images)
        assert len({image.numpy().tobytes() for image in images}) == len(images), "a copy in a tuple batch"


def _png(value: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_on_error_skip_in_tuple_mode_leaves_the_bad_samples_out(tmp_path):
    from tar_bytes import END, sample

    folder = tmp_path / "shards"
    folder.mkdir()
    good = [sample(f"s{i:02d}", _png(i), b"0") for i in range(10)]
    good[3] = sample("s03", b"not a png", b"0")
    (folder / "part-000000.tar").write_bytes(b"".join(good) + END)
    with MedDiffuseLoader(str(folder), 4, on_error="skip", shuffle=False) as loader:
        tuples = list(loader)
        assert loader.counters["skipped"] == 1 and loader.counters["padded"] == 1
    assert [len(labels) for _, labels in tuples] == [3, 4, 2]
    values = sorted(int(image.max() * 255 + 0.5) for images, _ in tuples for image in images)
    assert values == [0, 1, 2, 4, 5, 6, 7, 8, 9], "every good sample once, no stand-in copy"


@pytest.mark.parametrize("workers", [0, 2])
def test_rank_repeats_stay_in_tuple_batches(dataset, workers):
    """103 samples on 2 ranks: one rank repeats a sample (marked is_padding) to stay in step; a tuple keeps it."""
    rows = []
    for rank in (0, 1):
        with MedDiffuseLoader(dataset, 8, num_workers=workers, rank=rank, world_size=2, seed=1) as loader:
            rows.append(sum(len(labels) for _, labels in loader))
            assert loader.counters["padded_for_ranks"] == rank
    assert rows == [52, 52]
