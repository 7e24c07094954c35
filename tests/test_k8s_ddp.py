"""The process-group timeout the manifests set (MEDDIFFUSE_DDP_TIMEOUT in pipeline.env): a rank whose peer stopped
answering fails its collective after that many seconds instead of blocking for torch's default 30 minutes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from k8s_manifests import by_name, render

from meddiffuse_stream.jobs.train import process_group_timeout

PROBE = """
import os, signal, torch, torch.distributed as dist
from meddiffuse_stream.jobs.train import _distributed
rank, world, _ = _distributed(torch.device("cpu"))
print(f"rank {rank} of {world} up", flush=True)
if rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)  # a peer that stops answering, as a pod on a lost node does
try:
    dist.all_reduce(torch.ones(1))
except RuntimeError as error:
    print(f"rank {rank}: collective failed: {error}", flush=True)
    os._exit(3)  # not through the interpreter's exit: tearing down a group with a pending op aborts
print(f"rank {rank}: collective returned", flush=True)
"""


@pytest.mark.parametrize(
    ("value", "expected"), [("", None), ("600", timedelta(minutes=10)), (" 2.5 ", timedelta(seconds=2.5))]
)
def test_timeout_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("MEDDIFFUSE_DDP_TIMEOUT", value)
    assert process_group_timeout() == expected


@pytest.mark.parametrize("value", ["0", "-1", "ten", "nan", "inf"])
def test_a_timeout_that_is_not_positive_seconds_is_refused(monkeypatch, value):
    monkeypatch.setenv("MEDDIFFUSE_DDP_TIMEOUT", value)
    with pytest.raises(ValueError, match="MEDDIFFUSE_DDP_TIMEOUT"):
        process_group_timeout()


def test_every_overlay_sets_a_timeout_shorter_than_torchs_default():
    for overlay in ("cpu-smoke", "gpu", "gpu-indexed", "gpu-jobset"):
        value = by_name(render(overlay), "ConfigMap", "meddiffuse-pipeline")["data"]["MEDDIFFUSE_DDP_TIMEOUT"]
        assert 0 < float(value) < 30 * 60


@pytest.mark.slow
def test_a_stopped_peer_fails_the_collective_after_the_timeout(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "MEDDIFFUSE_DDP_TIMEOUT": "3",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for r in (0, 1)
    ]
    try:
        output, _ = ranks[0].communicate(timeout=120)  # torch's default would be 1800 s: this bound would fail
    finally:
        for process in ranks:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert ranks[0].returncode == 3, output
    assert "rank 0: collective failed" in output and "Timed out" in output
