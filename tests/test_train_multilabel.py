"""``train`` on multi-label shards converted from real NIH and CheXpert rows: masked BCE, per-finding AUC / AP and
macro AUC in metrics.json and the printed table, under torchrun (two gloo ranks ending equal) and through a kill -9
and ``--resume`` to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from xray_tables import (
    CHEXPERT_TABLE,
    NIH_TABLE,
    as_valid,
    chexpert_patient,
    make_chexpert,
    make_nih,
    nih_patient,
    read_rows,
    rows_of_patients,
)

from meddiffuse_stream.convert import CheXpertSource, ConvertOptions, NihSource, convert_dataset

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nih")
    header, rows = read_rows(NIH_TABLE)
    chosen = rows_of_patients(rows, nih_patient, 150, seed=2)
    make_nih(root / "src", header, chosen, chosen)
    options = ConvertOptions(splits={"train": 0.7, "val": 0.3}, shard_size=40)
    convert_dataset(NihSource(), str(root / "src"), str(root / "out"), options, progress=False)
    return root / "out"


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chexpert")
    header, rows = read_rows(CHEXPERT_TABLE)
    train = rows_of_patients(rows[:20000], chexpert_patient, 90, seed=3)
    valid = as_valid(rows_of_patients(rows[20000:40000], chexpert_patient, 30, seed=3))
    src = make_chexpert(root, header, train, valid)
    options = ConvertOptions(shard_size=30)
    convert_dataset(
        CheXpertSource(uncertain="ignore", official=True), str(src), str(root / "out"), options, progress=False
    )
    return root / "out"


def _batch_size(dataset: Path, world: int = 1) -> str:
    """A batch size that leaves no batch of one sample per rank (BatchNorm cannot train on one)."""
    samples = json.loads((dataset / "dataset.json").read_text())["splits"]["train"]["samples"]
    per_rank = -(-samples // world)
    return str(next(size for size in range(6, 12) if per_rank % size != 1))


def _command(dataset: Path, out: Path, *extra: str, world: int = 1) -> list[str]:
    return [
        "train",
        str(dataset),
        "--out",
        str(out),
        "--augment",
        "none",
        "--batch-size",
        _batch_size(dataset, world),
        "--device",
        "cpu",
        "--key-log",
        "--quiet",
        *extra,
    ]


@pytest.mark.slow
def test_two_torchrun_ranks_train_a_multi_label_model_and_report_every_finding(nih, tmp_path):
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [
        *launcher,
        "-m",
        "meddiffuse_stream.cli",
        *_command(nih, out, "--epochs", "2", "--loss", "weighted", world=2),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    fingerprints = [json.loads((out / f"rank{r}.json").read_text())["param_sha256"] for r in (0, 1)]
    assert fingerprints[0] == fingerprints[1]
    metrics = json.loads((out / "metrics.json").read_text())
    names = json.loads((nih / "dataset.json").read_text())["class_names"]
    val = metrics["val"]
    assert val["task"] == "multi_label" and list(val["auc_per_class"]) == names
    assert val["samples"] == json.loads((nih / "dataset.json").read_text())["splits"]["val"]["samples"]
    defined = [v for v in val["auc_per_class"].values() if v is not None]
    assert defined and val["macro_auc"] == pytest.approx(sum(defined) / len(defined))
    assert all(0 <= v <= 1 for v in defined) and metrics["final_loss"] > 0
    assert "val: macro AUC" in result.stdout and "Pleural_Thickening" in result.stdout


@pytest.mark.slow
def test_a_killed_multi_label_run_resumes_to_the_same_weights(chexpert, tmp_path):
    settings = ("--epochs", "3", "--checkpoint-every", "4", "--workers", "2")
    straight = [sys.executable, "-m", "meddiffuse_stream.cli", *_command(chexpert, tmp_path / "a", *settings)]
    resumable = _command(chexpert, tmp_path / "b", *settings)
    assert subprocess.run(straight, capture_output=True, cwd=REPO, env=ENV, timeout=300).returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "meddiffuse_stream.cli", *resumable],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "b" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    step = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"]
    resumed = subprocess.run(
        [sys.executable, "-m", "meddiffuse_stream.cli", *resumable, "--resume"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("a", "b")]
    assert 0 < step < final[0]["step"] == final[1]["step"]
    for name, tensor in final[0]["model"].items():
        assert torch.equal(tensor, final[1]["model"][name]), name
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert sum(c["unknown"] for c in metrics["val"]["per_class"].values()) == 0  # valid.csv has no uncertain
    train_unknown = json.loads((chexpert / "dataset.json").read_text())["splits"]["train"]["labels"]
    assert sum(c["unknown"] for c in train_unknown.values()) > 0  # what the mask kept out of the loss
