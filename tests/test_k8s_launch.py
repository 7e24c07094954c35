"""k8s/base/launch.py, the pods' entry point: usage errors exit 2 before anything starts (so podFailurePolicy fails
the Job on its first pod), a failed rank's exit code reaches the pod, the c10d store is hosted by the pod the
endpoint names, and the loader's cache is sized from the volume it sits on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from k8s_manifests import LAUNCHER, load_launcher

launch = load_launcher()
TRAIN = ["meddiffuse-stream", "train", "/nowhere/dataset", "--out=/nowhere/out", "--epochs=1"]
TORCHRUN = [
    "torchrun",
    "--nnodes=1",
    "--nproc-per-node=1",
    "--rdzv-backend=c10d",
    "--rdzv-endpoint=127.0.0.1:0",
    "--max-restarts=0",
    "--no-python",
]


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binaries = Path(sys.executable).parent
    environment = {
        **os.environ,
        "PATH": f"{binaries}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args], env=environment, cwd=cwd, text=True, capture_output=True, timeout=180
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([*TORCHRUN, *TRAIN, "--epcohs=3"], {}, "unrecognized arguments: --epcohs=3"),
        ([*TORCHRUN, *TRAIN, "--model=resnet19"], {}, "invalid choice: 'resnet19'"),
        ([*TRAIN, "--lr=fast"], {}, "invalid float value: 'fast'"),
        (["torchrun", "--nnodez=1", "--no-python", *TRAIN], {}, "torchrun: error"),
        (["torchrun", "--nnodes=$(NNODES)", "--no-python", *TRAIN], {}, "$(NNODES) reached the command unexpanded"),
        (["torchrun", "--nnodes=two", "--no-python", *TRAIN], {}, "launch: error: torchrun:"),
        (["torchrun", "--nnodes=1", "-m", "meddiffuse_stream.cli", *TRAIN[1:]], {}, "--no-python meddiffuse-stream"),
        ([*TORCHRUN, "python", "train.py"], {}, "expected meddiffuse-stream"),
        ([*TORCHRUN, *TRAIN], {"MEDDIFFUSE_DDP_TIMEOUT": "ten"}, "MEDDIFFUSE_DDP_TIMEOUT='ten'"),
        (["--shard-cache-size=40Gi", *TRAIN], {}, "needs --shard-cache=DIR"),
        (["--shard-cache-size=40Gi", *TRAIN, "--shard-cache=/tmp/c", "--shard-cache-bytes=1GiB"], {}, "not both"),
        (["--shard-cache-size=forty", *TRAIN, "--shard-cache=/tmp/c"], {}, "not a Kubernetes quantity"),
    ],
    ids=[
        "train-flag",
        "train-choice",
        "plain-train-value",
        "torchrun-flag",
        "unexpanded",
        "nnodes",
        "module",
        "other-program",
        "ddp-timeout",
        "cache-dir",
        "cache-both",
        "cache-quantity",
    ],
)
def test_usage_errors_exit_2_before_anything_starts(tmp_path, args, env, message):
    result = _run(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "rendezvous" not in result.stderr.lower() and not (tmp_path / "nowhere").exists(), "nothing was started"


def test_a_failing_rank_exits_with_its_own_code_through_torchrun(tmp_path):
    """A command that parses but fails when it runs: torchrun starts the rank, the rank exits 1 (a missing dataset),
    and the launcher exits with that code, naming the rank, after torchrun has given up."""
    result = _run(
        *TORCHRUN, "meddiffuse-stream", "train", str(tmp_path / "missing"), f"--out={tmp_path / 'out'}", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "launch: meddiffuse-stream failed (rank 0: exit 1); exiting 1" in result.stderr


def test_a_plain_command_is_the_program_itself(tmp_path):
    result = _run("meddiffuse-stream", "train", str(tmp_path / "missing"), f"--out={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 1 and "meddiffuse-stream train: error:" in result.stderr
    assert "launch:" not in result.stderr


@pytest.mark.parametrize(
    ("codes", "expected"), [([2], 2), ([-9], 137), ([-15, 2], 143), ([1, 2], 1), ([0], 1), ([300], 1)]
)
def test_the_first_failed_rank_gives_the_exit_code(codes, expected):
    failures = {rank: SimpleNamespace(exitcode=code) for rank, code in enumerate(codes)}
    assert launch.exit_code(failures) == expected


@pytest.mark.parametrize(
    ("endpoint", "hostname", "hosts"),
    [
        ("meddiffuse-train-r1-leader-0-0.meddiffuse-train-r1:29400", "meddiffuse-train-r1-leader-0-0", True),
        ("meddiffuse-train-r1-leader-0-0.meddiffuse-train-r1:29400", "meddiffuse-train-r1-workers-0-0", False),
        ("meddiffuse-train-0.meddiffuse-train:29400", "meddiffuse-train-0", True),
        ("meddiffuse-train-0.meddiffuse-train:29400", "meddiffuse-train-1", False),
        ("127.0.0.1:29400", "127", False),
        ("[::1]:29400", "host", False),
    ],
)
def test_the_pod_the_endpoint_names_hosts_the_rendezvous_store(endpoint, hostname, hosts):
    args = launch.prepare_torchrun(
        [
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            "--rdzv-conf=join_timeout=900",
            "--no-python",
            *TRAIN,
        ],
        hostname,
    )
    assert ("is_host=1" in args.rdzv_conf) == hosts
    assert args.rdzv_conf.startswith("join_timeout=900")


def test_an_explicit_is_host_is_kept():
    args = launch.prepare_torchrun(
        [
            "--nnodes=2",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=pod-0.svc:29400",
            "--rdzv-conf=is_host=0",
            "--no-python",
            *TRAIN,
        ],
        "pod-0",
    )
    assert args.rdzv_conf == "is_host=0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("40Gi", 40 << 30), ("512Mi", 512 << 20), ("1G", 10**9), ("1073741824", 1 << 30), ("1.5Gi", 3 << 29)],
)
def test_quantities(text, expected):
    assert launch.quantity_bytes(text) == expected


def test_the_cache_is_sized_from_its_volume(tmp_path):
    cache = tmp_path / "cache" / "shards"  # not there yet: the loader makes it; the volume holding it is measured
    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    assert launch.cache_budget(str(cache), 1 << 30) == int((1 << 30) * 0.85) >> 20 << 20
    assert launch.cache_budget(str(cache), 1 << 60) <= int(free * 0.85) + (64 << 20), "never more than the disk has"
    cache.mkdir(parents=True)
    (cache / "0123.tar").write_bytes(b"x" * (8 << 20))  # what the cache holds already is space it may keep
    assert launch.cache_budget(str(cache), 16 << 20) == int((16 << 20) * 0.85) >> 20 << 20
    assert launch.cache_budget(str(cache), 1 << 20) == 1 << 20, "at least one MiB"


def test_the_launcher_appends_the_derived_size_for_the_program(tmp_path):
    """The pod's command as the manifests write it: the launcher adds --shard-cache-bytes, the program takes it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    result = _run(
        "--shard-cache-size=64Mi",
        "meddiffuse-stream",
        "train",
        str(tmp_path / "missing"),
        f"--out={tmp_path / 'out'}",
        f"--shard-cache={cache / 'shards'}",
        "--help",
    )
    assert result.returncode == 0, result.stderr  # --help: argparse prints and exits 0, after the launcher's checks
    assert "--shard-cache-bytes" in result.stdout
