"""``train --train-fraction`` on a multi-label dataset: the subset keeps whole patients, every finding vector, and
dataset.json's per-finding counts of the smaller train split."""

from __future__ import annotations

import json

from readback import load_dataset
from xray_tables import NIH_TABLE, make_nih, nih_patient, read_rows, rows_of_patients

from meddiffuse_stream.convert import ConvertOptions, NihSource, convert_dataset
from meddiffuse_stream.jobs.subset import subset_dataset


def test_a_multi_label_subset_keeps_vectors_and_recounts_findings(tmp_path):
    header, rows = read_rows(NIH_TABLE)
    chosen = rows_of_patients(rows, nih_patient, 120, seed=7)
    src = make_nih(tmp_path / "nih", header, chosen, chosen)
    convert_dataset(NihSource(), str(src), str(tmp_path / "full"), ConvertOptions(), progress=False)
    manifest = subset_dataset(str(tmp_path / "full"), str(tmp_path / "half"), 0.5, seed=1)
    full, half = load_dataset(tmp_path / "full"), load_dataset(tmp_path / "half")
    assert manifest.task == "multi_label"
    train_full = {k for k, s in full["samples"].items() if s["shard"].startswith("train/")}
    train_half = {k for k, s in half["samples"].items() if s["shard"].startswith("train/")}
    assert train_half < train_full and 0.3 < len(train_half) / len(train_full) < 0.7
    for key in train_half:
        assert half["samples"][key]["labels.json"] == full["samples"][key]["labels.json"]
    names = half["info"]["class_names"]
    for k, name in enumerate(names):
        positives = sum(json.loads(half["samples"][key]["labels.json"])[k] for key in train_half)
        assert half["info"]["splits"]["train"]["labels"][name] == {
            "positive": positives,
            "negative": len(train_half) - positives,
            "unknown": 0,
        }
    assert half["info"]["splits"]["val"] == full["info"]["splits"]["val"]
