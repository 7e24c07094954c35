"""``shard imagefolder`` keeps a patient in one split: ``<class>/<patient>/<image>`` is split by the patient folder
(also when one patient has images under two classes), and a flat tree, where no patient can be known, is said
loudly on stderr and in the summary."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from builders import make_imagefolder, noise_image, write_image
from readback import load_dataset

from meddiffuse_stream.cli import main
from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset


def _patient_tree(root, patients: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    for patient in range(patients):
        classes = ["normal", "pneumonia"] if patient % 3 == 0 else ["normal" if patient % 2 else "pneumonia"]
        for class_name in classes:
            for image in range(3):
                write_image(root / class_name / f"p{patient:02d}" / f"img{image}.png", noise_image(rng, 8, 8))
    return root


def _splits_of(dataset) -> dict[str, set[str]]:
    splits: dict[str, set[str]] = defaultdict(set)
    for row in dataset["index"]:
        splits[row["patient_id"]].add(row["split"])
    return splits


def test_a_patient_tree_is_split_by_patient_folder_for_every_seed(tmp_path):
    src = _patient_tree(tmp_path / "in")
    for seed in range(4):
        out = tmp_path / f"out{seed}"
        summary = convert_dataset(ImageFolderSource(), str(src), str(out), ConvertOptions(seed=seed), progress=False)
        dataset = load_dataset(out)
        splits = _splits_of(dataset)
        assert sorted(splits) == [f"p{p:02d}" for p in range(12)]
        assert all(len(s) == 1 for s in splits.values()), splits
        assert summary.warnings == [] and dataset["info"]["warnings"] == []
        assert sum(s["patients"] for s in summary.splits.values()) == 12


def test_a_flat_tree_is_said_on_stderr_and_in_the_summary(tmp_path, capsys):
    src = make_imagefolder(tmp_path / "in", {"normal": 4, "pneumonia": 4}, size=8)
    write_image(src / "normal" / "p1" / "a.png", np.zeros((8, 8), np.uint8))
    assert main(["shard", "imagefolder", str(src), str(tmp_path / "out"), "--quiet"]) == 0
    captured = capsys.readouterr()
    words = "8 of 9 images (e.g. normal/img000.png) lie directly in their class folder, so no patient is known"
    assert f"warning: {words}" in captured.err  # at once, before the conversion runs
    assert f"warning: {words}" in captured.out  # and again in the summary
    assert any(words in w for w in load_dataset(tmp_path / "out")["info"]["warnings"])
    capsys.readouterr()
    assert main(["shard", "imagefolder", str(src), str(tmp_path / "o2"), "--quiet", "--patient-regex", "img(\\d)"]) == 0
    assert "no patient is known" not in capsys.readouterr().err


def test_split_official_is_refused_where_a_format_has_none(tmp_path, capsys):
    src = _patient_tree(tmp_path / "in", patients=2)
    assert main(["shard", "imagefolder", str(src), str(tmp_path / "out"), "--split", "official"]) != 0
    assert "--split official: the imagefolder format has no official split" in capsys.readouterr().err
