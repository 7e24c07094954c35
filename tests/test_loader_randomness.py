"""Random draws in user code that runs in the workers (``transform=``, stages, ``collate_fn``, ``worker_init_fn``):
distinct per worker, rank and epoch as with a DataLoader, reproducible from ``seed=``, and the same after a resume;
``torch.utils.data.get_worker_info()`` answers in worker processes, ``worker_info()`` in every kind of worker."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from loader_helpers import uneven_dataset

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.nodes import worker_info

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("randomness"), samples=60, shard_size=10))


def draw(sample: dict) -> dict:
    """A transform drawing from every global generator, and from the worker's own generators."""
    info = torch.utils.data.get_worker_info()
    ours = worker_info()
    sample["meta"] = {
        "torch": float(torch.rand(())),
        "random": random.random(),
        "numpy": float(np.random.random()),
        "own": float(torch.rand((), generator=ours.generator)) if ours is not None else None,
        "torch_info": None if info is None else (info.id, info.num_workers, info.seed),
        "ours": None if ours is None else (ours.id, ours.num_workers, ours.seed, ours.epoch),
        "init": INIT_SEEN.get("info"),
    }
    return sample


INIT_SEEN: dict[str, object] = {}


def remember_info(worker_id: int) -> None:
    """A worker_init_fn using the usual recipe: it needs get_worker_info() to answer."""
    info = torch.utils.data.get_worker_info()
    INIT_SEEN["info"] = (worker_id, info.id, info.num_workers, info.seed)
    np.random.seed(info.seed % 2**32)


def _draws(loader: MedDiffuseLoader, epochs: int = 1) -> list[list[dict]]:
    out = []
    for _ in range(epochs):
        out.append([meta for batch in loader for meta in batch["meta"]])
    return out


def test_process_workers_draw_distinct_numbers_and_know_who_they_are(dataset):
    with MedDiffuseLoader(dataset, 4, num_workers=2, transform=draw, as_dict=True, seed=3) as loader:
        first, second = _draws(loader, epochs=2)
    for name in ("torch", "random", "numpy", "own"):
        values = [d[name] for d in first + second]
        assert len(set(values)) == len(values) == 120, f"{name}: draws repeat across workers or epochs"
    infos = {d["torch_info"] for d in first}
    assert {i[0] for i in infos} == {0, 1} and {i[1] for i in infos} == {2}, "get_worker_info(): id, num_workers"
    seeds = {i[0]: i[2] for i in infos}
    assert len(infos) == 2 and seeds[0] != seeds[1], "one seed per worker in an epoch"
    assert {(d["ours"][0], d["ours"][2]) for d in first} == set(seeds.items()), "worker_info() agrees with torch"
    assert {d["ours"][3] for d in first} == {0} and {d["ours"][3] for d in second} == {1}
    assert not {d["torch_info"][2] for d in first} & {d["torch_info"][2] for d in second}, "a new seed each epoch"


def test_the_same_seed_draws_the_same_numbers_and_another_seed_others(dataset):
    def run(seed: int) -> list[dict]:
        with MedDiffuseLoader(dataset, 4, num_workers=2, transform=draw, as_dict=True, seed=seed) as loader:
            return _draws(loader)[0]

    one, again, other = run(5), run(5), run(6)
    assert [d["torch"] for d in one] == [d["torch"] for d in again]
    assert [d["numpy"] for d in one] == [d["numpy"] for d in again]
    assert not {d["torch"] for d in one} & {d["torch"] for d in other}


@pytest.mark.parametrize("stop", [3, 8])
def test_a_resumed_run_draws_what_the_uninterrupted_run_draws(dataset, stop):
    """Workers are seeded per batch from (seed, rank, epoch, worker, batch): a resume mid-epoch continues the
    same random augmentations, not the start of a worker's stream."""
    with MedDiffuseLoader(dataset, 4, num_workers=2, transform=draw, as_dict=True, seed=9) as loader:
        full = [[(m["torch"], m["random"], m["numpy"]) for m in batch["meta"]] for batch in loader]
    with MedDiffuseLoader(dataset, 4, num_workers=2, transform=draw, as_dict=True, seed=9) as loader:
        iterator = iter(loader)
        for _ in range(stop):
            next(iterator)
        state = loader.state_dict()
    with MedDiffuseLoader(dataset, 4, num_workers=2, transform=draw, as_dict=True, seed=9) as loader:
        loader.load_state_dict(state)
        resumed = [[(m["torch"], m["random"], m["numpy"]) for m in batch["meta"]] for batch in loader]
    assert resumed == full[stop:]


def test_worker_init_fn_sees_get_worker_info(dataset):
    INIT_SEEN.clear()
    with MedDiffuseLoader(
        dataset, 4, num_workers=2, transform=draw, as_dict=True, worker_init_fn=remember_info
    ) as loader:
        metas = _draws(loader)[0]
    seen = {d["init"] for d in metas}
    assert {s[0] for s in seen} == {0, 1} and all(s[0] == s[1] and s[2] == 2 for s in seen)
    assert not INIT_SEEN, "worker_init_fn ran in the workers, not here"


def test_ranks_draw_differently(dataset):
    def run(rank: int) -> list[float]:
        with MedDiffuseLoader(
            dataset, 4, num_workers=2, transform=draw, as_dict=True, rank=rank, world_size=2
        ) as loader:
            return [d["torch"] for d in _draws(loader)[0]]

    assert not set(run(0)) & set(run(1))


def own_draw(sample: dict) -> dict:
    """A transform drawing only from the worker's own generators (what thread workers should use)."""
    ours = worker_info()
    sample["meta"] = {
        "own": float(torch.rand((), generator=ours.generator)),
        "rng": float(ours.rng.random()),
        "random": ours.random.random(),
        "torch_info": torch.utils.data.get_worker_info(),
        "ours": (ours.id, ours.num_workers, ours.seed, ours.epoch),
    }
    return sample


@pytest.mark.parametrize("workers", [0, 2])
def test_threads_and_this_process_get_generators_of_their_own_and_leave_the_globals_alone(dataset, workers):
    def run() -> list[dict]:
        with MedDiffuseLoader(
            dataset, 4, num_workers=workers, worker_method="thread", transform=own_draw, as_dict=True, seed=2
        ) as loader:
            return _draws(loader)[0]

    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    one = run()
    assert torch.equal(torch.get_rng_state(), states[0]), "the caller's torch generator was reseeded or drawn from"
    assert random.getstate() == states[1] and (np.random.get_state()[1] == states[2]).all()
    assert all(d["torch_info"] is None for d in one), "in this process torch's worker info stays None"
    assert {d["ours"][0] for d in one} == ({0, 1} if workers else {0})
    for name in ("own", "rng", "random"):
        values = [d[name] for d in one]
        assert len(set(values)) == len(values) == 60, f"{name} repeats"
    assert [d["own"] for d in one] == [d["own"] for d in run()], "the worker's own generator is seeded from seed="
