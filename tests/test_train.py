"""Training for real: two torchrun processes (gloo), disjoint data, equal weights; kill -9 and --resume."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset
from meddiffuse_stream.jobs.metrics import classification_metrics, roc_auc

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}  # one thread: bit-reproducible CPU training


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    convert_dataset(
        DemoSource(n=120, size=16),
        None,
        str(root / "demo"),
        ConvertOptions(splits={"train": 0.8, "val": 0.2}, shard_size=17),
        progress=False,
    )
    return root / "demo"


@pytest.mark.slow
def test_two_torchrun_processes_see_disjoint_data_and_end_equal(demo, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "meddiffuse_stream.cli",
        "train",
        str(demo),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--augment",
        "standard",
        "--key-log",
        "--device",
        "cpu",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    train_keys = {row["key"] for row in _index(demo) if row["split"] == "train"}
    per_rank = [[line.split() for line in (out / f"keys-rank{r}.txt").read_text().splitlines()] for r in (0, 1)]
    for epoch in ("0", "1"):
        seen = [{key for e, key in rows if e == epoch} for rows in per_rank]
        assert not seen[0] & seen[1], "ranks overlap within an epoch"
        assert seen[0] | seen[1] == train_keys, "an epoch covers the train split"
    fingerprints = [json.loads((out / f"rank{r}.json").read_text())["param_sha256"] for r in (0, 1)]
    assert fingerprints[0] == fingerprints[1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "roc_auc", "cohen_kappa", "per_class"} <= set(metrics["val"])


def _index(root):
    import pyarrow.parquet as pq

    return pq.read_table(root / "index.parquet").to_pylist()


def _train(demo, out, *extra):
    return [
        sys.executable,
        "-m",
        "meddiffuse_stream.cli",
        "train",
        str(demo),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--augment",
        "mixup",
        "--checkpoint-every",
        "5",
        "--device",
        "cpu",
        "--workers",
        "2",
        "--key-log",
        *extra,
    ]


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(demo, tmp_path):
    straight = subprocess.run(_train(demo, tmp_path / "a"), capture_output=True, text=True, cwd=REPO, env=ENV)
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
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < killed_at < 72, "the kill must land mid-run"
    resumed = subprocess.run(
        [*_train(demo, tmp_path / "b"), "--resume"], capture_output=True, text=True, cwd=REPO, env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("a", "b")]
    assert final[0]["step"] == final[1]["step"] == 72
    for name, tensor in final[0]["model"].items():
        assert torch.equal(tensor, final[1]["model"][name]), name
    # the key log, cut back to the checkpoint on resume, lists every sample once per epoch, as the straight run's
    logs = [(tmp_path / d / "keys-rank0.txt").read_text().splitlines() for d in ("a", "b")]
    assert logs[0] == logs[1]
    per_epoch = Counter(line.split()[0] for line in logs[1])
    train_keys = {line.split()[1] for line in logs[1]}
    assert len(per_epoch) == 3 and set(per_epoch.values()) == {len(train_keys)} == {96}
    assert len(set(logs[1])) == len(logs[1]), "no sample twice in one epoch"


def test_metrics_against_hand_computed_values():
    labels = torch.tensor([0, 0, 1, 1, 1]).numpy()
    probabilities = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8], [0.7, 0.3]]).numpy()
    metrics = classification_metrics(labels, probabilities, ["a", "b"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 positive/negative pairs ranked right
    assert metrics["per_class"]["b"] == {"true": 3, "predicted": 3, "correct": 2}
    assert metrics["cohen_kappa"] == pytest.approx((0.6 - 0.52) / 0.48)
    assert roc_auc(torch.tensor([0.5, 0.5]).numpy(), torch.tensor([1, 0]).numpy()) == 0.5
    assert roc_auc(torch.tensor([0.5, 0.6]).numpy(), torch.tensor([1, 1]).numpy()) is None
