"""The command line as a user runs it: tools/shard.py and meddiffuse-stream, exit codes and summaries."""

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from builders import make_imagefolder, noise_image, write_image

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_tools_shard_converts_with_two_workers_and_prints_a_summary(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"normal": 12, "pneumonia": 8})
    (src / "normal" / "bad.png").write_bytes(b"")
    options = ["--workers", "2", "--shard-size", "4", "--split", "train=0.5,test=0.5", "--seed", "1", "--resize", "16"]
    result = _run("tools/shard.py", "imagefolder", str(src), str(tmp_path / "out"), *options, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "found 21  converted 20  rejected 1" in result.stdout and "zero-byte file" in result.stdout
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert set(info["splits"]) == {"train", "test"} and info["options"]["resize"] == 16


def test_unrecognised_layout_exits_nonzero_with_one_line(tmp_path):
    result = _run("-m", "meddiffuse_stream.cli", "shard", "rsna", str(tmp_path), str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "stage_2_train_labels.csv is missing" in result.stderr


def test_bad_flag_values_are_named(tmp_path):
    result = _run("tools/shard.py", "imagefolder", str(tmp_path), str(tmp_path / "o"), "--split", "train=0.9")
    assert result.returncode == 1 and "--split 'train=0.9'" in result.stderr
    result = _run("tools/shard.py", "imagefolder", str(tmp_path), str(tmp_path / "o"), "--shard-bytes", "lots")
    assert result.returncode == 2 and "not a size" in result.stderr


def test_demo_data_command(tmp_path):
    result = _run(
        "-m",
        "meddiffuse_stream.cli",
        "demo-data",
        str(tmp_path / "d"),
        "--n",
        "40",
        "--size",
        "32",
        "--test-modality",
        "ct",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "converted 40" in result.stdout


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_out_that_is_a_file_is_one_line(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 2, "b": 2}, size=8)
    (tmp_path / "out").write_text("not a folder")
    result = _run("tools/shard.py", "imagefolder", str(src), str(tmp_path / "out"), "--quiet")
    _one_line_error(result, "is a file, not a folder")
    result = _run("tools/shard.py", "imagefolder", str(src), str(tmp_path / "out" / "below"), "--quiet")
    _one_line_error(result, "which is a file, not a folder")


def _in_private_mount(tmp_path: Path, mount_options: str, then_read_only: bool, *args: str):
    """Run the CLI with OUT on a tmpfs mounted in a private mount namespace (no trace left on the machine)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("private mount namespaces are not allowed here")
    mount = tmp_path / "mnt"
    mount.mkdir()
    remount = f" && mount -o remount,ro,{mount_options} tmpfs {mount}" if then_read_only else ""
    command = " ".join(f"'{a}'" for a in (sys.executable, "-m", "meddiffuse_stream.cli", *args))
    script = f"mount -t tmpfs -o {mount_options} tmpfs {mount} && mkdir {mount}/out{remount} && exec {command}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_read_only_out_is_one_line(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 2, "b": 2}, size=8)
    result = _in_private_mount(
        tmp_path, "size=1m", True, "shard", "imagefolder", str(src), str(tmp_path / "mnt" / "out"), "--quiet"
    )
    _one_line_error(result, "read-only file system: choose a writable OUT")


def test_disk_full_is_one_line(tmp_path):
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        for index in range(12):
            image = noise_image(rng, 64, 64, 3)  # ~12 KiB each, 290 KiB in all
            write_image(src / label / f"p{index % 4}" / f"{index}.png", image)  # in patient folders: no warning
    result = _in_private_mount(
        tmp_path, "size=96k", False, "shard", "imagefolder", str(src), str(tmp_path / "mnt" / "out"), "--quiet"
    )
    _one_line_error(result, "no space left on the device")


def test_mistyped_storage_option_names_the_option_never_its_value(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 2, "b": 2}, size=8)
    result = _run(
        "tools/shard.py",
        "imagefolder",
        str(src),
        "s3://bucket/out",
        "--quiet",
        "--storage-option",
        "secert=hunter2-secret-value",
        "--storage-option",
        "endpoint_url=http://127.0.0.1:9",
    )
    _one_line_error(result, "--storage-option secert", "(did you mean secret?)")
    assert "hunter2" not in result.stderr and "hunter2" not in result.stdout
    result = _run(
        "tools/shard.py",
        "imagefolder",
        str(src),
        "s3://bucket/out",
        "--quiet",
        "--storage-option",
        "hunter2-secret-value",
    )  # the name forgotten: only the secret given
    _one_line_error(result, "--storage-option number 1 is not NAME=VALUE")
    assert "hunter2" not in result.stderr


@pytest.fixture
def silent_endpoint():
    """A TCP port that accepts connections and never answers: the worst kind of unreachable endpoint."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for connection in held:
        connection.close()
    server.close()


@pytest.mark.slow
def test_unreachable_s3_endpoint_fails_in_bounded_time_with_one_line(tmp_path, silent_endpoint):
    src = make_imagefolder(tmp_path / "in", {"a": 2, "b": 2}, size=8)
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    for endpoint in (silent_endpoint, "http://127.0.0.1:9"):  # one that never answers, one that refuses
        result = subprocess.run(
            [
                sys.executable,
                "tools/shard.py",
                "imagefolder",
                str(src),
                "s3://bucket/out",
                "--quiet",
                "--storage-option",
                f"endpoint_url={endpoint}",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            env={**__import__("os").environ, **env},
        )
        _one_line_error(result, "s3://bucket/out", f"(endpoint {endpoint})")


def _one_class_dataset(tmp_path: Path, counts: dict[str, int]) -> Path:
    src = make_imagefolder(tmp_path / "in", counts, size=16)
    out = tmp_path / "ds"
    assert _run("tools/shard.py", "imagefolder", str(src), str(out), "--quiet").returncode == 0
    return out


def test_train_refuses_a_one_class_dataset_and_one_without_class_names(tmp_path):
    out = _one_class_dataset(tmp_path, {"only": 12})
    result = _run("-m", "meddiffuse_stream.cli", "train", str(out), "--out", str(tmp_path / "run"), "--epochs", "1")
    _one_line_error(result, "dataset.json has only ['only']", "at least two named classes")
    info = json.loads((out / "dataset.json").read_text())
    del info["class_names"]
    (out / "dataset.json").write_text(json.dumps(info))  # num_classes still says 1: the manifest contradicts itself
    result = _run("-m", "meddiffuse_stream.cli", "train", str(out), "--out", str(tmp_path / "run"), "--epochs", "1")
    _one_line_error(result, "dataset.json: num_classes: 1 but class_names has 0")
    del info["num_classes"]
    (out / "dataset.json").write_text(json.dumps(info))
    result = _run("-m", "meddiffuse_stream.cli", "train", str(out), "--out", str(tmp_path / "run"), "--epochs", "1")
    _one_line_error(result, "dataset.json has no class_names")
    info["class_names"] = ["only", "other"]
    (out / "dataset.json").write_text(json.dumps(info))
    result = _run("-m", "meddiffuse_stream.cli", "train", str(out), "--out", str(tmp_path / "run"), "--epochs", "1")
    _one_line_error(result, "the train split holds samples of ['only'] only")
