"""A shard cache that cannot be written — a read-only folder, a full disk — warns once and the loader streams
instead: the epoch is complete and identical, nothing is skipped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from loader_helpers import uneven_dataset

from meddiffuse_stream import MedDiffuseLoader

pytestmark = pytest.mark.timeout(120)


def _epoch(loader) -> list[tuple[str, float]]:
    return [(k, float(i.sum())) for batch in loader for k, i in zip(batch["key"], batch["image"], strict=True)]


@contextlib.contextmanager
def read_only(folder: Path):
    """The folder cannot be written to, even by root (the immutable attribute), or by its owner (mode 0555)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root without chattr +i: no way to make a folder read-only here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _wait_for_new_threads(before: set[threading.Thread], seconds: float = 60.0) -> None:
    """Until every thread started since ``before`` (and any they start) has ended; fails naming them if not."""
    deadline = time.monotonic() + seconds
    while True:
        running = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not running:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"threads still running after close(): {[t.name for t in running]}")
        for thread in running:
            try:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            except RuntimeError:  # started but not yet running: look again shortly
                time.sleep(0.01)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_read_only_cache_folder_warns_once_and_streams(tmp_path, workers):
    local = uneven_dataset(tmp_path, samples=40, shard_size=8)
    with MedDiffuseLoader(str(local), 8, as_dict=True, seed=5, num_workers=workers) as loader:
        expected = _epoch(loader)
    cache = tmp_path / "cache"
    cache.mkdir()
    before = set(threading.enumerate())
    with read_only(cache), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with MedDiffuseLoader(
            str(local),
            8,
            as_dict=True,
            seed=5,
            num_workers=workers,
            cache_dir=str(cache),
            worker_method="thread" if workers else "process",
        ) as loader:
            assert _epoch(loader) == expected
            counters = dict(loader.counters)
        # thread workers read the next epoch ahead and close() does not wait for a fetch in flight: let those
        # fetches end while the folder is still read-only and the warnings still recorded (bounded)
        _wait_for_new_threads(before)
    messages = [str(w.message) for w in caught if "cannot be written" in str(w.message)]
    assert len(messages) == 1 and str(cache) in messages[0] and "streamed" in messages[0], messages
    assert counters.get("skipped", 0) == 0 and counters["cache_write_failures"] >= 1
    assert not list(cache.iterdir())


_FULL_DISK = """
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # no file may grow past 4 KiB: a full disk, for files
from meddiffuse_stream import MedDiffuseLoader
with MedDiffuseLoader(sys.argv[1], 8, as_dict=True, seed=5, num_workers=int(sys.argv[3]),
                      cache_dir=sys.argv[2]) as loader:
    rows = [(k, float(i.sum())) for b in loader for k, i in zip(b["key"], b["image"])]
    print(json.dumps([rows, dict(loader.counters)]))
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_a_full_disk_under_the_cache_warns_once_per_process_and_streams(tmp_path, workers):
    local = uneven_dataset(tmp_path, samples=40, shard_size=8)
    with MedDiffuseLoader(str(local), 8, as_dict=True, seed=5, num_workers=workers) as loader:
        expected = _epoch(loader)
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(local), str(cache), str(workers)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    rows, counters = json.loads(result.stdout.strip().splitlines()[-1])
    assert [tuple(row) for row in rows] == expected
    assert counters.get("skipped", 0) == 0 and counters["cache_write_failures"] >= 1
    warned = result.stderr.count("cannot be written")
    assert 1 <= warned <= max(1, workers), result.stderr
    assert "File too large" in result.stderr
    assert not [p for p in cache.iterdir() if p.suffix == ".tar"]
