"""The experiment runner and preview on a tiny config: CSV, table, plots, picture; re-runs reuse finished cells."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset
from meddiffuse_stream.augment.diffusion import ClassConditionalGenerator
from meddiffuse_stream.experiment import summarise
from meddiffuse_stream.models import SmallCNN

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    convert_dataset(DemoSource(n=64, size=16), None, str(root / "demo"),
                    ConvertOptions(splits={"train": 0.75, "test": 0.25}), progress=False)  # fmt: skip
    torch.manual_seed(0)
    torch.save({"model": SmallCNN(1, 2).state_dict()}, root / "teacher.pt")
    ClassConditionalGenerator.create(16, 1, 2, width=8, steps=2).save_pretrained(root / "gen")
    return root


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "meddiffuse_stream.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)  # fmt: skip


def test_experiment_writes_csv_table_and_plots_and_reuses_cells(setup, tmp_path):
    config = {"dataset": str(setup / "demo"), "out": str(tmp_path / "exp"), "epochs": 1, "batch_size": 16,
              "methods": ["standard", "mixup", "meddiffusemix", "meddiffusemix-hard-mask"], "seeds": [0, 1],
              "teacher": str(setup / "teacher.pt"), "generator": str(setup / "gen"),
              "variant_cache": str(tmp_path / "variants")}  # fmt: skip
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    first = _cli("experiment", str(tmp_path / "exp.yaml"))
    assert first.returncode == 0, first.stderr[-3000:]
    with open(tmp_path / "exp" / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 8 and {r["method"] for r in rows} == set(config["methods"])
    assert {"accuracy", "macro_f1", "roc_auc", "cohen_kappa", "roi_unchanged", "saliency_iou"} <= set(rows[0])
    table = (tmp_path / "exp" / "results.md").read_text()
    assert "| meddiffusemix-hard-mask | test | 2 |" in table and "±" in table
    for picture in ("metrics.png", "evidence.png"):
        assert Image.open(tmp_path / "exp" / picture).size[0] > 300
    stamp = (tmp_path / "exp" / "runs" / "mixup-s1" / "metrics.json").stat().st_mtime
    again = _cli("experiment", str(tmp_path / "exp.yaml"))
    assert again.returncode == 0 and (tmp_path / "exp" / "runs" / "mixup-s1" / "metrics.json").stat().st_mtime == stamp


def test_train_fraction_cells_train_on_a_patient_level_subset(setup, tmp_path):
    config = {"dataset": str(setup / "demo"), "out": str(tmp_path / "x"), "methods": ["standard"], "epochs": 1,
              "batch_size": 8, "fractions": [0.5, 1.0]}  # fmt: skip
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(config))
    result = _cli("experiment", str(tmp_path / "x.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "x" / "results.csv") as stream:
        assert {r["fraction"] for r in csv.DictReader(stream)} == {"0.5", "1.0"}
    assert "standard (0.5 of train)" in (tmp_path / "x" / "results.md").read_text()


def test_subset_keeps_whole_patients_and_other_splits(setup, tmp_path):
    import json

    from meddiffuse_stream import MedDiffuseLoader
    from meddiffuse_stream.subset import subset_dataset

    info = subset_dataset(str(setup / "demo"), str(tmp_path / "half"), 0.5, seed=3, shard_size=7)
    original = json.loads((setup / "demo" / "dataset.json").read_text())
    assert abs(info["splits"]["train"]["samples"] - original["splits"]["train"]["samples"] / 2) <= 1
    assert info["splits"]["test"] == original["splits"]["test"]
    with MedDiffuseLoader(str(tmp_path / "half"), 4, as_dict=True) as loader:  # shards verify against dataset.json
        keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == info["splits"]["train"]["samples"] == len(set(keys))
    with pytest.raises(ValueError, match="train-fraction"):
        subset_dataset(str(setup / "demo"), str(tmp_path / "none"), 0.0)


def test_preview_writes_a_picture_of_the_expected_size(setup, tmp_path):
    models = ["--teacher", str(setup / "teacher.pt"), "--generator", str(setup / "gen")]
    picture = str(tmp_path / "p.png")
    result = _cli("preview", str(setup / "demo"), "--augment", "meddiffusemix", "-n", "4", "-o", picture, *models)
    assert result.returncode == 0, result.stderr[-3000:]
    width, height = Image.open(tmp_path / "p.png").size
    assert (width, height) == (800, 640)  # 5 panels x 4 rows at 2 inches, 80 dpi


def test_summary_has_mean_and_confidence_interval():
    rows = [{"method": "m", "split": "test", "accuracy": a, "macro_f1": a, "roc_auc": None, "cohen_kappa": 0.0,
             "roi_unchanged": 1.0, "saliency_iou": None} for a in (0.5, 0.7)]  # fmt: skip
    table = summarise(rows)
    assert "0.600 ± 1.271" in table and "n/a" in table  # t(1) = 12.706, sd 0.1414, n 2


def test_subset_choice_takes_whole_patients():
    from meddiffuse_stream.subset import _choose_keys

    rows = [{"key": f"k{i}", "patient_id": f"p{i // 3}"} for i in range(60)]  # 20 patients, 3 images each
    chosen = _choose_keys(rows, 0.3, seed=1)
    patients = {f"p{int(k[1:]) // 3}" for k in chosen}
    assert len(chosen) == 3 * len(patients) and 18 <= len(chosen) <= 20
    assert chosen == _choose_keys(rows, 0.3, seed=1) != _choose_keys(rows, 0.3, seed=2)
