"""Training on CUDA: AMP engaged, and a run killed with SIGKILL resumes to bit-equal weights (--deterministic)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import meddiffuse_stream.jobs.train as training
from meddiffuse_stream.jobs.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]


def test_amp_training_runs_the_model_in_half_precision_with_a_loss_scaler(demo, tmp_path, monkeypatch):
    dtypes: set[torch.dtype] = set()
    build = training.build_model

    def recorded(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
        return model

    monkeypatch.setattr(training, "build_model", recorded)
    results = train(
        TrainConfig(
            demo,
            str(tmp_path / "amp"),
            model="cnn",
            augment="none",
            epochs=1,
            batch_size=8,
            eval_splits=[],
            device="cuda",
        )
    )
    assert dtypes == {torch.float16}, f"logits under autocast came out as {dtypes}"
    assert results["distributed"]["device"] == "cuda:0" and math.isfinite(results["final_loss"])
    state = torch.load(tmp_path / "amp" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["scaler"]["scale"] > 0, "GradScaler was off (its state is empty when disabled)"


def test_training_on_cuda_runs_the_device_stage_on_the_gpu(demo, tmp_path):
    """``train`` hands its device to the loader: a model-free method runs on CUDA in the stage's thread and stream,
    with ``as_dict`` batches of a dataset with ROI masks (as the CLI trains)."""
    results = train(
        TrainConfig(
            demo,
            str(tmp_path / "mixup"),
            model="cnn",
            augment="mixup",
            epochs=1,
            batch_size=8,
            eval_splits=["val"],
            device="cuda",
        )
    )
    assert results["counters"]["augment"]["batches"] == results["steps"] > 0
    assert math.isfinite(results["final_loss"]) and "accuracy" in results["val"]


def _train(demo: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "meddiffuse_stream.cli",
        "train",
        demo,
        "--out",
        str(out),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--augment",
        "none",
        "--model",
        "cnn",
        "--checkpoint-every",
        "3",
        "--device",
        "cuda",
        "--deterministic",
        "--workers",
        "1",
        *extra,
    ]


ENV = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONHASHSEED": "0"}


def test_killed_training_resumes_to_bit_equal_weights_on_cuda(demo, tmp_path):
    straight = subprocess.run(
        _train(demo, tmp_path / "a"), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    process = subprocess.Popen(
        _train(demo, tmp_path / "b"),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "b" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    final = torch.load(tmp_path / "a" / "checkpoint.pt", map_location="cpu", weights_only=True)
    killed_at = torch.load(tmp_path / "b" / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    assert 0 < killed_at < final["step"], "the kill must land mid-run"
    resumed = subprocess.run(
        [*_train(demo, tmp_path / "b"), "--resume"], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = torch.load(tmp_path / "b" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert again["step"] == final["step"]
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
    assert again["scaler"] == final["scaler"]
