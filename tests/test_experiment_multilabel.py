"""The experiment on the multi-finding phantom, end to end on a tiny config: students train with masked BCE under
Mixup / CutMix / MedDiffuseMix, results.csv carries each finding's AUC and evidence, results.md the per-finding
table; a method refused on multi-label data stops the run naming why."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from meddiffuse_stream.augment.diffusion import ClassConditionalGenerator
from meddiffuse_stream.convert import ConvertOptions, convert_dataset
from meddiffuse_stream.jobs.demo_findings import FINDINGS, FindingsSource
from meddiffuse_stream.models import SmallCNN

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml-experiment")
    convert_dataset(FindingsSource(n=72, size=16, seed=1), None, str(root / "demo"), ConvertOptions(), progress=False)
    torch.manual_seed(0)
    torch.save({"model": SmallCNN(1, 3).state_dict()}, root / "teacher.pt")
    ClassConditionalGenerator.create(16, 1, 1, width=8, steps=2).save_pretrained(root / "gen")
    return root


def _config(setup, out, methods):
    return {
        "dataset": str(setup / "demo"),
        "out": str(out),
        "epochs": 1,
        "batch_size": 8,
        "methods": methods,
        "seeds": [0, 1],
        "teacher": str(setup / "teacher.pt"),
        "generator": str(setup / "gen"),
        "variant_cache": str(out / "variants"),
        "saliency_methods": [],
    }


def _run(path):
    command = [sys.executable, "-m", "meddiffuse_stream.cli", "experiment", str(path)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)


def test_the_multi_label_experiment_reports_every_finding(setup, tmp_path):
    unsure_teacher = {"min_confidence": 0.0}  # an untrained teacher: mix anyway, W still 0 on its evidence
    methods = ["none", "cutmix", {"name": "meddiffusemix", "method": "meddiffusemix", "mix": unsure_teacher}]
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(_config(setup, tmp_path / "exp", methods)))
    result = _run(tmp_path / "exp.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "exp" / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {row["method"] for row in rows} == {"none", "cutmix", "meddiffusemix"} and len(rows) == 3 * 2 * 2
    for row in rows:
        assert all(f"auc:{name}" in row for name in FINDINGS) and row["roc_auc"] != ""
        changed = row["method"] != "none"
        assert all((row[f"roi_unchanged:{name}"] != "") == changed for name in FINDINGS), row["method"]
    ours = [row for row in rows if row["method"] == "meddiffusemix"]
    assert all(float(row["w_roi:nodule"]) < float(row["w_off"]) for row in ours), "less W on findings than off"
    report = (tmp_path / "exp" / "results.md").read_text()
    assert "| meddiffusemix | line_artefact |" in report and "Per finding, on the images each method changed" in report
    run = json.loads((tmp_path / "exp" / "runs" / "cutmix-s0" / "metrics.json").read_text())
    assert run["val"]["task"] == "multi_label" if "val" in run else run["test"]["task"] == "multi_label"


def test_a_method_refused_on_multi_label_data_stops_the_run_saying_why(setup, tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(_config(setup, tmp_path / "bad", ["dafusion"])))
    result = _run(tmp_path / "bad.yaml")
    assert result.returncode != 0 and "'dafusion' does not run on multi-label data" in result.stderr
