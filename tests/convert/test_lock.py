"""One writer per OUT: a second conversion fails at once, locally and on the real S3 server; stale locks are taken
over and named; a run that lost its lease does not commit."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import make_imagefolder

from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, OutputLockedError, convert_dataset
from meddiffuse_stream.convert import lock as lock_module
from meddiffuse_stream.convert.lock import LOCK_NAME, acquire_lock
from meddiffuse_stream.storage.location import Location

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "meddiffuse_stream.cli", *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def test_a_second_conversion_into_a_locked_out_fails_at_once_naming_the_holder(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 3, "b": 3}, size=8)
    out = tmp_path / "out"
    out.mkdir()
    with acquire_lock(Location(str(out))):
        with pytest.raises(OutputLockedError, match=rf"host {socket.gethostname()}, pid {os.getpid()}"):
            convert_dataset(ImageFolderSource(), str(src), str(out), ConvertOptions(), progress=False)
        process = _cli("shard", "imagefolder", str(src), str(out), "--quiet")
        _, stderr = process.communicate(timeout=60)  # a wait for the holder would overrun this bound
    assert process.returncode == 1 and stderr.count("\n") == 1
    assert "is being written by another conversion" in stderr and "Traceback" not in stderr
    assert not (out / "dataset.json").exists()
    summary = convert_dataset(ImageFolderSource(), str(src), str(out), ConvertOptions(), progress=False)
    assert summary.converted == 6 and not (out / LOCK_NAME).exists()  # released: the next run goes ahead


def _second_run_while_the_first_runs(first_args, second_args, lock_exists, env=None):
    """A retried job whose first pod still runs: the second conversion starts once the first holds OUT."""
    first = _cli(*first_args, env=env)
    deadline = time.monotonic() + 60
    while not lock_exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock_exists(), "the first run never took the lock"
    second = _cli(*second_args, env=env)
    _, second_err = second.communicate(timeout=60)
    # the event that matters: the second run ended while the first still ran (it did not wait for the lock)
    assert first.poll() is None, "the first run must still be running for this test to mean anything"
    first_out, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    return second.returncode, second_err, first_out


def test_a_retried_job_cannot_write_the_out_its_first_pod_still_writes(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 5, "b": 5}, size=8)
    out = tmp_path / "out"
    code, stderr, first_out = _second_run_while_the_first_runs(
        ["demo-data", str(out), "--n", "400", "--shard-size", "20", "--quiet"],
        ["shard", "imagefolder", str(src), str(out), "--quiet"],
        lambda: (out / LOCK_NAME).exists(),
    )
    assert code == 1 and "is being written by another conversion" in stderr and stderr.count("\n") == 1
    info = json.loads((out / "dataset.json").read_text())
    assert info["source_format"] == "demo" and info["counts"]["converted"] == 400 and "converted 400" in first_out


def test_a_lock_left_by_a_killed_run_is_stale_taken_over_and_named(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 3, "b": 3}, size=8)
    out = tmp_path / "out"
    out.mkdir()
    stale = {"host": "node-7", "pid": 4242, "started": "2026-11-30T10:00:00+00:00", "run": "x"}
    (out / LOCK_NAME).write_text(json.dumps(stale))  # a SIGKILLed run leaves its lock file; the flock died with it
    summary = convert_dataset(ImageFolderSource(), str(src), str(out), ConvertOptions(), progress=False)
    note = next(n for n in summary.notes if n.startswith("OUT was locked"))
    assert "host node-7, pid 4242, started 2026-11-30T10:00:00+00:00" in note
    assert "OUT was locked" in summary.table() and "OUT was locked" not in (out / "dataset.json").read_text()


def test_lease_lock_on_memory_storage_refuses_a_second_holder_and_detects_staleness(monkeypatch):
    out = Location("memory://lease-test")
    first = acquire_lock(out)
    with pytest.raises(OutputLockedError, match="last heartbeat 0 s ago"):
        acquire_lock(out)
    first._stop.set()  # the holder stops renewing, as a killed pod would
    monkeypatch.setattr(lock_module, "STALE_AFTER_SECONDS", 0.5)
    time.sleep(0.6)
    second = acquire_lock(out)
    assert second.stale and "last heartbeat" in second.stale
    with pytest.raises(OutputLockedError, match="lost its lock"):
        first.verify()
    second.verify()
    second.release()
    assert not out.exists(LOCK_NAME)


@pytest.mark.s3
def test_s3_second_conversion_fails_at_once_and_a_stale_lease_is_taken_over(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    src = make_imagefolder(tmp_path / "in", {"a": 3, "b": 3}, size=8)
    out_url = f"{s3_bucket}/ds"
    options = s3_server.storage_options
    out = Location(out_url, options)
    out.makedirs()
    holder = acquire_lock(out)
    with pytest.raises(OutputLockedError, match="is being written by another conversion"):
        convert_dataset(
            ImageFolderSource(), str(src), out_url, ConvertOptions(), storage_options=options, progress=False
        )
    env = {**os.environ, **s3_server.env}
    process = _cli("shard", "imagefolder", str(src), out_url, "--quiet", env=env)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and stderr.count("\n") == 1 and "another conversion" in stderr
    holder._stop.set()  # killed without releasing
    monkeypatch.setattr(lock_module, "STALE_AFTER_SECONDS", 1.0)
    time.sleep(1.5)
    summary = convert_dataset(
        ImageFolderSource(), str(src), out_url, ConvertOptions(), storage_options=options, progress=False
    )
    assert summary.converted == 6 and any(n.startswith("OUT was locked") for n in summary.notes)
    with pytest.raises(OutputLockedError, match="lost its lock"):
        holder.verify()  # the old holder, were it alive, must not commit
    assert not out.exists(LOCK_NAME)


@pytest.mark.s3
def test_s3_a_retried_job_cannot_write_the_out_its_first_pod_still_writes(s3_server, s3_bucket, tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 5, "b": 5}, size=8)
    env = {**os.environ, **s3_server.env}
    out_url = f"{s3_bucket}/ds"
    out = Location(out_url, s3_server.storage_options)
    code, stderr, _ = _second_run_while_the_first_runs(
        ["demo-data", out_url, "--n", "400", "--shard-size", "20", "--quiet"],
        ["shard", "imagefolder", str(src), out_url, "--quiet"],
        lambda: out.fs.invalidate_cache() or out.exists(LOCK_NAME),
        env=env,
    )
    assert code == 1 and "another conversion" in stderr and "last heartbeat" in stderr
    assert json.loads(out.read_bytes("dataset.json"))["counts"]["converted"] == 400
