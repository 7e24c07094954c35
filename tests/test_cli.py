"""The command line as a user runs it: tools/shard.py and meddiffuse-stream, exit codes and summaries."""

import json
import subprocess
import sys
from pathlib import Path

from builders import make_imagefolder

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
    result = _run("-m", "meddiffuse_stream.cli", "demo-data", str(tmp_path / "d"), "--n", "40", "--size", "32",
                  "--test-modality", "ct", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "converted 40" in result.stdout
