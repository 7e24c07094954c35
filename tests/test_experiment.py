"""The experiment runner and preview on a tiny config: CSV, table, plots, picture; re-runs reuse finished cells."""

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset
from meddiffuse_stream.augment.diffusion import ClassConditionalGenerator
from meddiffuse_stream.jobs.experiment import summarise
from meddiffuse_stream.models import SmallCNN

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    convert_dataset(
        DemoSource(n=64, size=16),
        None,
        str(root / "demo"),
        ConvertOptions(splits={"train": 0.75, "test": 0.25}),
        progress=False,
    )
    torch.manual_seed(0)
    torch.save({"model": SmallCNN(1, 2).state_dict()}, root / "teacher.pt")
    ClassConditionalGenerator.create(16, 1, 2, width=8, steps=2).save_pretrained(root / "gen")
    return root


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "meddiffuse_stream.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def test_experiment_writes_csv_table_and_plots_and_reuses_cells(setup, tmp_path):
    config = {
        "dataset": str(setup / "demo"),
        "out": str(tmp_path / "exp"),
        "epochs": 1,
        "batch_size": 16,
        "methods": ["standard", "mixup", "meddiffusemix", "meddiffusemix-hard-mask"],
        "seeds": [0, 1],
        "teacher": str(setup / "teacher.pt"),
        "generator": str(setup / "gen"),
        "variant_cache": str(tmp_path / "variants"),
        "jobs": 2,
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    first = _cli("experiment", str(tmp_path / "exp.yaml"))
    assert first.returncode == 0, first.stderr[-3000:]
    train = json.loads((setup / "demo" / "dataset.json").read_text())["splits"]["train"]["samples"]
    assert f"teacher saliency: {train} maps cached" in first.stdout, "one extraction per sample, before the runs"
    with open(tmp_path / "exp" / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 8 and {r["method"] for r in rows} == set(config["methods"])
    assert {
        "accuracy",
        "macro_f1",
        "roc_auc",
        "cohen_kappa",
        "roi_unchanged",
        "roi_moved",
        "w_roi",
        "w_off",
        "saliency_iou",
        "label_consistency",
        "augmented_share",
        "delta_off",
        "moved_off",
        "protected_share",
        "protected_to_lesion",
        "ssim",
        "final_loss",
    } <= set(rows[0])
    table = (tmp_path / "exp" / "results.md").read_text()
    assert "| meddiffusemix-hard-mask | 2 |" in table and "±" in table and "Reading:" in table
    assert "| meddiffusemix − standard | 1 |" in table
    ran = json.loads((tmp_path / "exp" / "runs" / "meddiffusemix-hard-mask-s0" / "metrics.json").read_text())
    assert ran["config"]["augment"] == "meddiffusemix-hard-mask", "the recorded name is the one that ran"
    from meddiffuse_stream.augment import MixConfig

    recorded = ran["method"]["settings"]["mix"]
    assert ran["method"]["base_method"] == "meddiffusemix" and recorded["soft_mask"] is False
    assert MixConfig(**recorded) == MixConfig(soft_mask=False), "the whole MixConfig that ran is recorded"
    evidence = json.loads((tmp_path / "exp" / "evidence" / "standard-s0.json").read_text())["metrics"]
    assert evidence["roi_unchanged"] is None and evidence["roi_moved"] is not None, "geometry: moved, not kept"
    variants = json.loads((tmp_path / "exp" / "variants.json").read_text())
    assert variants["accuracy"] and variants["distance"] > 0 and "frechet" in variants
    provenance = json.loads((tmp_path / "exp" / "provenance.json").read_text())
    assert provenance["git"]["commit"] and provenance["timing"]["seconds"] > 0
    assert provenance["inputs"]["teacher"]["sha256"] and len(provenance["methods"]) >= 3
    for picture in ("metrics.png", "evidence.png"):
        assert Image.open(tmp_path / "exp" / picture).size[0] > 300
    stamp = (tmp_path / "exp" / "runs" / "mixup-s1" / "metrics.json").stat().st_mtime
    again = _cli("experiment", str(tmp_path / "exp.yaml"))
    assert again.returncode == 0 and (tmp_path / "exp" / "runs" / "mixup-s1" / "metrics.json").stat().st_mtime == stamp
    assert "maps cached" not in again.stdout, "nothing left to run: nothing to warm"


def test_train_fraction_cells_train_on_a_patient_level_subset(setup, tmp_path):
    config = {
        "dataset": str(setup / "demo"),
        "out": str(tmp_path / "x"),
        "methods": ["standard"],
        "epochs": 1,
        "batch_size": 8,
        "fractions": [0.5, 1.0],
    }
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(config))
    result = _cli("experiment", str(tmp_path / "x.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "x" / "results.csv") as stream:
        assert {r["fraction"] for r in csv.DictReader(stream)} == {"0.5", "1.0"}
    assert "standard (0.5 of train)" in (tmp_path / "x" / "results.md").read_text()


def test_subset_keeps_whole_patients_and_other_splits(setup, tmp_path):
    import json

    from meddiffuse_stream import MedDiffuseLoader
    from meddiffuse_stream.jobs.subset import subset_dataset

    info = subset_dataset(str(setup / "demo"), str(tmp_path / "half"), 0.5, seed=3, shard_size=7)
    original = json.loads((setup / "demo" / "dataset.json").read_text())
    assert abs(info.split_stats["train"].samples - original["splits"]["train"]["samples"] / 2) <= 1
    assert info.split_stats["test"].to_document() == original["splits"]["test"]
    with MedDiffuseLoader(str(tmp_path / "half"), 4, as_dict=True) as loader:  # shards verify against dataset.json
        keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == info.split_stats["train"].samples == len(set(keys))
    with pytest.raises(ValueError, match="train-fraction"):
        subset_dataset(str(setup / "demo"), str(tmp_path / "none"), 0.0)


def test_preview_writes_a_picture_of_the_expected_size(setup, tmp_path):
    models = ["--teacher", str(setup / "teacher.pt"), "--generator", str(setup / "gen")]
    picture = str(tmp_path / "p.png")
    result = _cli("preview", str(setup / "demo"), "--augment", "meddiffusemix", "-n", "4", "-o", picture, *models)
    assert result.returncode == 0, result.stderr[-3000:]
    width, height = Image.open(tmp_path / "p.png").size
    assert (width, height) == (800, 640)  # 5 panels x 4 rows at 2 inches, 80 dpi


def test_summary_has_mean_and_confidence_interval_and_reads_paired_differences():
    rows = [
        {
            "method": m,
            "seed": seed,
            "fraction": 1.0,
            "split": split,
            "steps": 10,
            "roc_auc": auc + shift,
            "roi_unchanged": 1.0 if m == "meddiffusemix" else 0.5,
        }
        for m, shift in (("meddiffusemix", 0.0), ("standard", 0.1))
        for seed, auc in ((0, 0.5), (1, 0.7))
        for split in ("val", "test")
    ]
    table = summarise(rows)
    assert "| meddiffusemix | 2 | 10 | 0.600 ± 1.271 |" in table  # t(1) = 12.706, sd 0.1414, n 2
    assert "n/a" in table  # ROI moved: not measured
    assert "| meddiffusemix − standard | 1 | -0.100 ± 0.000 |" in table
    assert "left 100.0% of lesion pixels untouched (standard 50.0%)" in table
    assert "lower beyond seed noise" in table


def test_reading_credits_an_ablation_only_when_it_differs_beyond_noise():
    def rows(ablation_shift: float) -> list[dict]:
        return [
            {"method": m, "seed": seed, "fraction": 1.0, "split": split, "steps": 10, "roc_auc": auc + shift}
            for m, shift in (("meddiffusemix", 0.0), ("meddiffusemix-random-mask", ablation_shift))
            for seed, auc in ((0, 0.6), (1, 0.7), (2, 0.8))
            for split in ("val", "test")
        ]

    same = summarise(
        [{**r, "roc_auc": r["roc_auc"] + 0.01 * r["seed"] * (r["method"] != "meddiffusemix")} for r in rows(-0.01)]
    )
    assert "not owed to what meddiffusemix-random-mask removes" in same
    apart = summarise(rows(-0.2))
    assert "MedDiffuseMix − meddiffusemix-random-mask: val +0.200 ± 0.000, higher beyond seed noise" in apart
    assert "not owed to" not in apart


def test_reading_reads_each_comparison_once_at_the_largest_fraction_and_against_no_augmentation():
    rows = [
        {
            "method": m,
            "seed": seed,
            "fraction": fraction,
            "split": split,
            "steps": 10,
            "roc_auc": auc + (0.1 if m == "none" and fraction == 1.0 else 0.0),
        }
        for m in ("meddiffusemix", "meddiffusemix-random-mask", "none")
        for fraction in (0.5, 1.0)
        for seed, auc in ((0, 0.6), (1, 0.7), (2, 0.8))
        for split in ("val", "test")
    ]
    reading = summarise(rows).split("Reading: ", 1)[1]
    assert reading.startswith("With the whole train split (fractions 0.5: the differences table):")
    assert reading.count("MedDiffuseMix − meddiffusemix-random-mask:") == 1
    assert "in-domain (val) AUC, MedDiffuseMix − none: -0.100 ± 0.000, lower beyond seed noise" in reading


def test_experiment_config_is_strict(tmp_path):
    from meddiffuse_stream.jobs.experiment_config import load_experiment_config

    def load(extra):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"dataset": "d", "out": "o", "methods": ["standard"], **extra}))
        return load_experiment_config(path)

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\]; known: .*'epochs'"):
        load({"epoch": 3})
    with pytest.raises(ValueError, match="unknown augment method 'mixupp'"):
        load({"methods": ["mixupp"]})
    with pytest.raises(ValueError, match=r"unknown mix setting\(s\) \['quantil'\]"):
        load({"methods": [{"method": "meddiffusemix", "mix": {"quantil": 0.8}}]})
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['variants'\]"):
        load({"methods": [{"method": "meddiffusemix", "variants": 3}]})
    with pytest.raises(ValueError, match="quantile must be in"):
        load({"methods": [{"method": "meddiffusemix", "mix": {"quantile": 2}}]})
    with pytest.raises(ValueError, match="unique"):
        load({"methods": ["cutmix", "cutmix"]})
    config = load(
        {
            "methods": [
                {
                    "name": "mdm-q80",
                    "method": "meddiffusemix-hard-mask",
                    "mix": {"quantile": 0.8},
                    "variants_per_sample": 3,
                    "original_probability": 0.25,
                }
            ]
        }
    )
    described = config.methods[0].describe()
    assert described["base_method"] == "meddiffusemix" and described["name"] == "mdm-q80"
    from meddiffuse_stream.augment import MixConfig

    assert MixConfig(**described["settings"]["mix"]) == MixConfig(soft_mask=False, quantile=0.8)
    assert config.methods[0].settings.mix == MixConfig(soft_mask=False, quantile=0.8), "typed once, at load"
    with pytest.raises(ValueError, match="quantile must be a float"):
        load({"methods": [{"method": "meddiffusemix", "mix": {"quantile": "high"}}]})
    assert described["settings"]["variants_per_sample"] == 3


def test_subset_choice_takes_whole_patients():
    from meddiffuse_stream.jobs.subset import _choose_keys

    rows = [{"key": f"k{i}", "patient_id": f"p{i // 3}"} for i in range(60)]  # 20 patients, 3 images each
    chosen = _choose_keys(rows, 0.3, seed=1)
    patients = {f"p{int(k[1:]) // 3}" for k in chosen}
    assert len(chosen) == 3 * len(patients) and 18 <= len(chosen) <= 20
    assert chosen == _choose_keys(rows, 0.3, seed=1) != _choose_keys(rows, 0.3, seed=2)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from /proc")
def test_cell_workers_exit_when_the_experiment_is_killed(setup, tmp_path):
    import signal
    import time

    config = {
        "dataset": str(setup / "demo"),
        "out": str(tmp_path / "exp"),
        "epochs": 400,  # long enough to be killed mid-run
        "batch_size": 16,
        "methods": ["none", "standard"],
        "seeds": [0, 1],
        "jobs": 2,
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    parent = subprocess.Popen(
        [sys.executable, "-m", "meddiffuse_stream.cli", "experiment", str(tmp_path / "exp.yaml")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (tmp_path / "exp" / "runs").exists():
            time.sleep(0.5)
        workers = [pid for pid in _children(parent.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, "two cell workers were running"
        parent.send_signal(signal.SIGTERM)  # the parent alone, as `kill PID` or a pod's PID 1 gets it
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.5)
        assert not any(_alive(pid) for pid in workers), "a worker trained on after the experiment was killed"
    finally:
        parent.kill()
        for pid in set(workers) | set(_children(parent.pid)):  # orphans are no longer the parent's children
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
