"""Never hang, never orphan: workers restore default signals, die with their parent, never hold up an exit;
close() is quick; a loader pickles (ddp_spawn, mp.spawn) and shards by the rank it lands on."""

import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from loader_helpers import uneven_dataset

from meddiffuse_stream import MedDiffuseLoader

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("life"), samples=600, shard_size=50))


def _run(script: str, timeout: float = 120, folder: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter (from a file in ``folder`` when spawned processes must import it)."""
    command = [sys.executable, "-c", textwrap.dedent(script)]
    if folder is not None:
        (folder / "script.py").write_text(textwrap.dedent(script))
        command = [sys.executable, str(folder / "script.py")]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the script did not exit within {timeout} s (a hang): {error.stderr!r}")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _gone(pid: int) -> bool:
    """Dead, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """Batches of 64 images of 64x64: each message is larger than a pipe's buffer, so it is written in parts."""
    return str(uneven_dataset(tmp_path_factory.mktemp("large"), samples=400, shard_size=100, size=64))


@pytest.mark.parametrize("method", ["process", "thread"])
@pytest.mark.parametrize("batches", ["small", "large"])
def test_close_returns_while_workers_are_busy(dataset, large, method, batches):
    source, batch_size = (dataset, 4) if batches == "small" else (large, 64)
    loader = MedDiffuseLoader(source, batch_size, num_workers=2, worker_method=method, prefetch=1)
    iterator = iter(loader)
    next(iterator)  # workers now hold a full queue and wait to hand over the next batches
    pids = loader.graph.workers.pool.pids
    closer = threading.Thread(target=loader.close)
    closer.start()
    closer.join(timeout=60)  # a close() that waited on a worker blocked in a hand-over would not return
    assert not closer.is_alive(), "close() did not return while the workers were busy"
    assert all(_gone(pid) for pid in pids)
    assert len(list(loader)) == len(loader), "a closed loader starts new workers when used again"
    loader.close()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["process", "thread"])
def test_a_script_with_a_sigterm_handler_and_a_pause_after_the_last_epoch_exits(dataset, method):
    """Lightning installs a SIGTERM handler before the loader exists; forked workers used to inherit it, ignore
    terminate() and hold the interpreter's exit join forever. Nobody calls close() here."""
    result = _run(f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, lambda *_: print("handler ran", flush=True))
        from meddiffuse_stream import MedDiffuseLoader
        loader = MedDiffuseLoader({dataset!r}, 4, num_workers=2, worker_method={method!r}, prefetch=1)
        for epoch in range(2):
            for batch in loader:
                pass
        time.sleep(1.0)  # the workers have read ahead into epoch 2 and wait on full queues
        print("pids", *loader.graph.workers.pool.pids, flush=True)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    pids = [int(p) for p in result.stdout.split("pids")[1].split()]
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), "a worker outlived the script"


@pytest.mark.slow
def test_workers_follow_default_signals_and_die_with_their_parent(dataset):
    result = _run(f"""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: None)  # the parent ignores SIGTERM ...
        from meddiffuse_stream import MedDiffuseLoader
        from meddiffuse_stream.nodes import WorkerDiedError
        loader = MedDiffuseLoader({dataset!r}, 4, num_workers=2, prefetch=1)
        iterator = iter(loader)
        next(iterator)
        first, second = loader.graph.workers.pool.pids
        os.kill(first, signal.SIGINT)  # ... a worker ignores Ctrl-C (its parent handles it) ...
        os.kill(first, signal.SIGTERM)  # ... and ends on SIGTERM
        try:
            for _ in iterator:
                pass
        except WorkerDiedError as error:
            print("died:", error, flush=True)
        loader.close()
        loader = MedDiffuseLoader({dataset!r}, 4, num_workers=2, prefetch=1)
        next(iter(loader))
        print("orphans", *loader.graph.workers.pool.pids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind
    """)
    assert "died: decode worker 0" in result.stdout and "exit code -15" in result.stdout, result.stdout + result.stderr
    pids = [int(p) for p in result.stdout.split("orphans")[1].split()]
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), "workers outlived a parent killed with SIGKILL"


def test_a_loader_pickles_with_its_workers_running_and_resumes_its_position(dataset):
    with MedDiffuseLoader(dataset, 8, num_workers=2, as_dict=True, seed=4) as loader:
        expected = [list(b["key"]) for b in loader] + [list(b["key"]) for b in loader]
    loader = MedDiffuseLoader(dataset, 8, num_workers=2, as_dict=True, seed=4)
    copy = pickle.loads(pickle.dumps(loader))  # workers are running: they stay behind
    assert [list(b["key"]) for b in copy] == expected[: len(loader)]
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    resumed = pickle.loads(pickle.dumps(loader))
    resumed.load_state_dict(loader.state_dict())
    assert [list(b["key"]) for b in resumed] == expected[3 : len(loader)]
    for each in (loader, copy, resumed):
        each.close()


def test_a_loader_with_a_device_stage_pickles(dataset):
    """ddp_spawn pickles the loader with its AugmentStage (which holds a lock and built functions)."""
    import torch

    with MedDiffuseLoader(dataset, 8, num_workers=1, augment="mixup", seed=2) as loader:
        copy = pickle.loads(pickle.dumps(loader))
        for (images, targets), (copied, copied_targets) in zip(loader, copy, strict=True):
            assert torch.equal(images, copied) and torch.equal(targets, copied_targets)
        copy.close()


@pytest.mark.slow
def test_mp_spawn_gets_the_loader_pickled_and_each_rank_its_share(dataset, tmp_path):
    """Built in the parent before any process group exists, passed to mp.spawn: each rank shards by its rank."""
    result = _run(
        f"""
        import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
        from meddiffuse_stream import MedDiffuseLoader

        def work(rank, loader, out):
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{_free_port()}")
            dist.init_process_group("gloo", rank=rank, world_size=2)
            keys = [k for batch in loader for k in batch["key"]]
            with open(f"{{out}}/rank{{rank}}.txt", "w") as stream:
                stream.write("\\n".join(keys))
            loader.close()
            dist.destroy_process_group()

        if __name__ == "__main__":
            loader = MedDiffuseLoader({dataset!r}, 8, num_workers=2, as_dict=True)
            next(iter(loader))  # workers are running in the parent
            mp.spawn(work, args=(loader, {str(tmp_path)!r}), nprocs=2, join=True)
            loader.close()
    """,
        timeout=180,
        folder=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 300 and not set(ranks[0]) & set(ranks[1])


def test_exit_does_not_wait_for_a_prefetch_in_its_back_off():
    """A shard fetch retrying in a daemon thread does not hold the interpreter's exit (an executor's would)."""
    result = _run(
        """
        import threading, time
        from meddiffuse_stream.nodes.reading.prefetch import ShardPrefetcher
        never = threading.Event()
        prefetcher = ShardPrefetcher(lambda index: None if index == 0 else never.wait(600), [0, 1], {0, 1})
        prefetcher.get(0)  # returns at once and starts fetching shard 1, which never ends
        time.sleep(0.2)
        print("leaving", flush=True)
    """,
        timeout=30,
    )
    assert result.returncode == 0 and "leaving" in result.stdout, result.stderr


def test_workers_started_from_a_thread_outlive_that_thread(dataset):
    """Workers forked from another thread than the main one are watched by a watchdog, not PR_SET_PDEATHSIG (which
    would kill them when that thread ends)."""
    import threading

    loader = MedDiffuseLoader(dataset, 8, num_workers=2, as_dict=True)
    loader.close()
    batches = []
    thread = threading.Thread(target=lambda: batches.extend(b["key"] for b in loader))
    thread.start()
    thread.join(120)
    assert len(batches) == len(loader), "the first pass ran in a thread"
    pids = loader.graph.workers.pool.pids
    assert pids and not any(_gone(p) for p in pids), "workers live on after the thread that started them ended"
    assert len(list(loader)) == len(loader)
    loader.close()


def _record_frozen_objects(worker: int) -> None:
    import gc
    import os

    with open(os.environ["MEDDIFFUSE_TEST_FROZEN"], "a") as out:
        out.write(f"{worker} {gc.get_freeze_count()}\n")


def test_a_worker_process_keeps_what_its_parent_built_out_of_the_collector(dataset, tmp_path, monkeypatch):
    """A full collection in a fresh fork walks every object the parent made (~0.15 s of CPU per worker with s3fs
    loaded, and the pages it touches get copied): a worker freezes them as it starts; thread workers leave the
    collector alone."""
    import gc

    record = tmp_path / "frozen.txt"
    monkeypatch.setenv("MEDDIFFUSE_TEST_FROZEN", str(record))
    with MedDiffuseLoader(dataset, 8, num_workers=2, worker_init_fn=_record_frozen_objects) as loader:
        next(iter(loader))
    counts = dict(line.split() for line in record.read_text().splitlines())
    assert sorted(counts) == ["0", "1"] and all(int(count) > 10_000 for count in counts.values()), counts
    record.unlink()
    before = gc.get_freeze_count()
    with MedDiffuseLoader(
        dataset, 8, num_workers=2, worker_method="thread", worker_init_fn=_record_frozen_objects
    ) as loader:
        next(iter(loader))
    assert gc.get_freeze_count() == before
