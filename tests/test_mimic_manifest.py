"""``tools/mimic_manifest.py`` on a MIMIC-CXR-JPG layout whose study labels are real CheXpert-labeller rows: each
image gets its study's labels, and ``shard csv --label-columns`` turns them into the same vectors as the table."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from readback import load_dataset
from xray_tables import CHEXPERT_TABLE, read_rows, write_csv, write_grey

from meddiffuse_stream.cli import main as cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import mimic_manifest


def test_study_labels_reach_every_image_and_convert_by_patient(tmp_path, capsys):
    header, rows = read_rows(CHEXPERT_TABLE)
    root = tmp_path / "mimic"
    studies, images, splits = [], [], []
    for index, row in enumerate(rows[:30]):
        subject, study = f"{10000032 + index // 3}", f"{50414267 + index}"
        by_name = dict(zip(header, row, strict=True))
        studies.append([subject, study, *(by_name[name] for name in mimic_manifest.OBSERVATIONS)])
        for view in range(1 + index % 2):
            dicom = f"d{index:03d}v{view}"
            images.append([dicom, subject, study, "PA" if view == 0 else "LATERAL"])
            splits.append([dicom, study, subject, "train"])
            write_grey(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", "JPEG")
    images.append(["orphan", "10009999", "59999999", "PA"])  # a study with no label row
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *mimic_manifest.OBSERVATIONS], studies)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"], images)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], splits)
    manifest = tmp_path / "elsewhere" / "manifest.csv"
    manifest.parent.mkdir()
    assert mimic_manifest.main([str(root), str(manifest)]) == 0
    assert "left out 1: images whose study has no label row" in capsys.readouterr().err
    columns = ",".join(mimic_manifest.OBSERVATIONS)
    command = ["shard", "csv", str(manifest), str(tmp_path / "out"), "--label-columns", columns, "--quiet"]
    assert cli([*command, "--blank-label", "negative", "--uncertain", "ignore"]) == 0
    dataset = load_dataset(tmp_path / "out")
    assert dataset["info"]["counts"]["converted"] == len(images) - 1
    cell = {"1.0": 1, "0.0": 0, "": 0, "-1.0": None}
    by_study = {study[1]: study[2:] for study in studies}
    patients = defaultdict(set)
    for sample in dataset["samples"].values():
        meta = json.loads(sample["json"])
        expected = [cell[c] for c in by_study[meta["columns"]["study_id"]]]
        assert json.loads(sample["labels.json"]) == [v or 0 for v in expected]
        assert json.loads(sample["label_mask.json"]) == [int(v is not None) for v in expected]
        patients[meta["patient_id"]].add(meta["split"])
    assert len(patients) == 10 and all(len(s) == 1 for s in patients.values())
