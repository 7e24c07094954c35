"""State changes while a pass is live, and loaders dropped without close(): the live iterator ends at once and the
next pass is exact; a dropped loader's workers are reaped when its last reference goes (not at the next cyclic
collection), and nothing the workers inherited prints a traceback."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest
from loader_helpers import uneven_dataset
from test_loader_lifecycle import _gone, _run

from meddiffuse_stream import MedDiffuseLoader

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("live"), samples=120, shard_size=10))


def _keys(batches) -> list[list[str]]:
    return [list(batch["key"]) for batch in batches]


@pytest.mark.parametrize("method", ["process", "thread"])
@pytest.mark.parametrize("saved_at", [0, 4])
def test_load_state_dict_during_a_pass_ends_that_pass_and_the_next_is_exact(dataset, method, saved_at):
    with MedDiffuseLoader(dataset, 8, num_workers=2, worker_method=method, as_dict=True, seed=4) as loader:
        reference = _keys(loader)
    with MedDiffuseLoader(dataset, 8, num_workers=2, worker_method=method, as_dict=True, seed=4) as loader:
        iterator = iter(loader)
        for _ in range(saved_at):
            next(iterator)
        state = loader.state_dict()
        live = iter(loader)
        for _ in range(6):
            next(live)
        loader.load_state_dict(state)
        with pytest.raises(StopIteration):
            next(live)  # ended at once: it neither runs on in another pass nor waits for batches nobody sends
        assert _keys(loader) == reference[saved_at:], "the next pass resumes exactly where the state was taken"
        assert len(_keys(loader)) == len(reference), "and the pass after it is the next whole epoch"


def _worker_pids(loader: MedDiffuseLoader) -> list[int]:
    return list(loader.graph.workers.pool.pids)


def _wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds} s")
        time.sleep(0.05)


def test_a_dropped_loader_reaps_its_workers_without_the_cyclic_collector(dataset):
    gc.collect()
    gc.disable()  # only reference counting may free it
    try:
        fds_before = len(os.listdir("/proc/self/fd"))
        pids: list[int] = []
        for _ in range(5):
            loader = MedDiffuseLoader(dataset, 8, num_workers=2, as_dict=True)
            next(iter(loader))
            pids += _worker_pids(loader)
            del loader
        assert len(pids) == 10
        _wait_until(lambda: all(_gone(pid) for pid in pids), 10, "the dropped loaders' workers did not exit")
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2, "descriptors of dropped loaders stay open"
    finally:
        gc.enable()


def test_forked_children_of_a_process_with_loaders_print_no_worker_tracebacks(dataset, tmp_path):
    """A fork of a process that holds loaders (a DataLoader worker, a subprocess by fork) inherits their finalizers:
    collecting them there must not touch the parent's workers (AssertionError: can only test a child process)."""
    result = _run(
        f"""
        import gc, multiprocessing, os
        from meddiffuse_stream import MedDiffuseLoader

        loaders = [MedDiffuseLoader({dataset!r}, 8, num_workers=2) for _ in range(2)]
        for loader in loaders:
            next(iter(loader))

        def child():
            loaders.clear()  # the child's copies go: their finalizers run here, in a process that owns no worker
            gc.collect()

        context = multiprocessing.get_context("fork")
        process = context.Process(target=child)
        process.start()
        process.join(30)
        assert process.exitcode == 0, process.exitcode
        print("done")
        """,
        folder=Path(tmp_path),
    )
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "can only test a child process" not in result.stderr, result.stderr
