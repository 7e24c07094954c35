"""The loader under the real clients: Lightning (1 device with worker processes; 2-process DDP with the loader
built before fit; checkpoint resume mid-epoch and at an epoch's end on 2 ranks; an even_batches=False validation
with a per-step synced metric) and Accelerate under torchrun (prepare, save_state / load_state on 2 ranks,
gather_for_metrics with is_padding; accumulate() at epoch ends, skip_first_batches, per-batch gathers of an
even_batches=False evaluation)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loader_helpers import uneven_dataset

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "frameworks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
for _name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_name, None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("frameworks"), samples=103, shard_size=10))


def _run(command: list[str], what: str, timeout: float = 300) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=SCRIPTS)
    except subprocess.TimeoutExpired as error:
        tail = (error.stderr or b"")[-3000:]
        pytest.fail(f"{what} did not exit within {timeout} s (a hang): {tail!r}")
    assert result.returncode == 0, f"{what} failed:\n{result.stderr[-4000:]}"


def _records(out: Path, ranks: int) -> list[dict]:
    return [json.loads((out / f"keys-rank{r}.json").read_text()) for r in range(ranks)]


def _trained(record: dict) -> list[tuple[int, list[str]]]:
    return [(epoch, keys) for epoch, *_, keys in record["trained"]]


def _lightning(data: str, out: Path, devices: int, strategy: str = "ddp", ckpt: Path | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "lightning_fit.py", data, str(out), str(devices), strategy]
    _run(command + ([str(ckpt)] if ckpt else []), f"Lightning fit on {devices} device(s) with strategy {strategy}")
    return _records(out, devices)


def test_lightning_one_device_with_worker_processes_exits(data, tmp_path):
    """Lightning's SIGTERM handler is inherited by forked workers: the run used to hang after fit."""
    (record,) = _lightning(data, tmp_path / "one", 1, "auto")
    epochs = [[k for e, keys in _trained(record) if e == epoch for k in keys] for epoch in (0, 1)]
    assert all(sorted(keys) == sorted(set(keys)) and len(keys) == 103 for keys in epochs)
    real = [keys for epoch, sanity, keys in record["validated"] if not sanity and epoch == 0]
    assert len(real) == record["len_val"] == 13, "validation after the sanity check is a full pass"


def test_lightning_ddp_loader_built_before_fit_resumes_on_every_rank(data, tmp_path):
    full = _lightning(data, tmp_path / "full", 2)
    per_rank = [_trained(r) for r in full]
    assert len(per_rank[0]) == len(per_rank[1]) == 2 * full[0]["len_train"] == 2 * 13, "equal batch counts"
    for epoch in (0, 1):
        seen = [{k for e, keys in batches if e == epoch for k in keys} for batches in per_rank]
        assert not (seen[0] & seen[1]) - _repeats(full, epoch), "ranks overlap beyond the padding"
        assert len(seen[0] | seen[1]) == 103
    for rank, record in enumerate(full):
        real = [keys for epoch, sanity, keys in record["validated"] if not sanity and epoch == 0]
        assert len(real) == record["len_val"] == 7, f"rank {rank}: a full validation pass after the sanity check"
    checkpoints = tmp_path / "full" / "ckpt"
    mid = _lightning(data, tmp_path / "mid", 2, ckpt=checkpoints / "step=5.ckpt")
    end = _lightning(data, tmp_path / "end", 2, ckpt=checkpoints / "end-epoch=0.ckpt")
    for rank in (0, 1):
        assert _trained(mid[rank]) == per_rank[rank][5:], f"rank {rank} resumed mid-epoch from rank 0's state"
        assert _trained(end[rank]) == per_rank[rank][13:], f"rank {rank} resumed after epoch 0 at epoch 1"


def test_lightning_ddp_spawn_pickles_the_loader_into_each_rank(data, tmp_path):
    """ddp_spawn pickles the loaders into spawned ranks: each must shard by its own rank (both used to train on
    every sample)."""
    records = _lightning(data, tmp_path / "spawn", 2, "ddp_spawn")
    assert all(len(_trained(r)) == 2 * 13 for r in records)
    for epoch in (0, 1):
        seen = [{k for e, keys in _trained(r) if e == epoch for k in keys} for r in records]
        assert len(seen[0] | seen[1]) == 103 and len(seen[0] & seen[1]) <= 1, f"epoch {epoch} split by rank"


def _repeats(records: list[dict], epoch: int) -> set[str]:
    """Keys both ranks saw in ``epoch``: at most world_size - 1 padding repeats."""
    seen = [{k for e, *_, keys in r["trained"] if e == epoch for k in keys} for r in records]
    repeated = seen[0] & seen[1]
    assert len(repeated) <= 1
    return repeated


def _torchrun(data: str, out: Path, state: Path | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "accelerate_train.py",
        data,
        str(out),
    ] + ([str(state)] if state else [])
    _run(command, "Accelerate under torchrun")
    return _records(out, 2)


def test_accelerate_under_torchrun_saves_and_loads_state_on_two_ranks(data, tmp_path):
    full = _torchrun(data, tmp_path / "full")
    runs = [r["trained"] for r in full]
    assert len(runs[0]) == len(runs[1]) == 26
    for epoch in (0, 1):
        seen = [{k for e, keys in run if e == epoch for k in keys} for run in runs]
        assert len(seen[0] | seen[1]) == 103 and len(seen[0] & seen[1]) <= 1
    evaluation = [r["eval"] for r in full]
    assert evaluation[0]["gathered"] == 104, "gather_for_metrics alone counts the padding repeat"
    assert evaluation[0]["without_padding"] == 103, "with is_padding gathered alongside, every sample once"
    assert sorted(evaluation[0]["keys"] + evaluation[1]["keys"]) == sorted(
        set(evaluation[0]["keys"] + evaluation[1]["keys"])
    )
    mid = _torchrun(data, tmp_path / "mid", tmp_path / "full" / "state-step5")
    end = _torchrun(data, tmp_path / "end", tmp_path / "full" / "state-end0")
    for rank in (0, 1):
        assert mid[rank]["trained"] == runs[rank][5:], f"rank {rank} resumed from rank 0's mid-epoch state"
        assert end[rank]["trained"] == runs[rank][13:], f"rank {rank} resumed at epoch 1 from an epoch-end state"


def test_accelerate_learns_epoch_ends_skip_names_its_way_and_uneven_evaluation_gathers_every_batch(data, tmp_path):
    """accumulate() syncs at this loader's last batch as at a DataLoader's (it never saw the end: 7 optimizer steps
    for a DataLoader's 8, windows across epochs); skip_first_batches names loader.skip(n) (it failed with
    'NoneType' object is not iterable); even_batches=False with gather_for_metrics at every batch ends (ranks of
    51 and 52 samples in batches of 3 yielded 17 and 18: the last gather waited forever) and counts every sample
    once."""
    out = tmp_path / "epochs"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run([*command, "accelerate_epochs.py", data, str(out)], "Accelerate epochs under torchrun", timeout=240)
    records = [json.loads((out / f"epochs-rank{r}.json").read_text()) for r in range(2)]
    for record in records:
        assert record["batches"] == [13, 13]
        assert record["ours"] == record["theirs"] == [5, 5], "optimizer steps per epoch as with a DataLoader"
        assert "call loader.skip(n)" in record["skip"]
        for ids in record["gathered"]:
            assert len(ids) == 103 and len(set(ids)) == 103, "gather_for_metrics: every sample once"


def test_lightning_ddp_validates_an_even_batches_false_loader_with_a_per_step_synced_metric(data, tmp_path):
    """self.log(sync_dist=True, on_step=True) is an all-reduce at every validation batch: ranks of 17 and 18
    batches crashed rank 1 (the launcher exited 0); now both ranks run the same steps and see every sample once."""
    out = tmp_path / "uneven"
    out.mkdir()
    _run([sys.executable, "lightning_uneven.py", data, str(out)], "Lightning DDP with even_batches=False", 240)
    records = [json.loads((out / f"uneven-rank{r}.json").read_text()) for r in range(2)]
    assert records[0]["steps"] == records[1]["steps"] == 18
    keys = records[0]["validated"] + records[1]["validated"]
    assert len(keys) == len(set(keys)) == 103
