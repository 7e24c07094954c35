"""Classes found in folder names or a label column are listed in the summary, and one far smaller than the rest —
a misspelt folder or label — is warned of on stderr, in the summary and in dataset.json; declared classes are not
second-guessed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import make_imagefolder, noise_image, write_image

from meddiffuse_stream.cli import main
from meddiffuse_stream.convert import ConvertOptions, CsvSource, ImageFolderSource, convert_dataset
from meddiffuse_stream.convert.class_counts import small_classes


@pytest.mark.parametrize(
    ("counts", "flagged"),
    [
        ({"normal": 280, "pneumonia": 300, "pnuemonia": 2}, ["pnuemonia"]),  # a typo beside hundreds
        ({"a": 100, "b": 2}, ["b"]),
        ({"a": 100, "b": 3}, []),  # 3 x 50 > 100: rare, not flagged
        ({"common": 1000, "rare": 30, "other": 900}, []),  # a rare class of real data
        ({"0": 60, "1": 0, "2": 60}, ["1"]),  # an integer label no row uses
        ({"only": 5}, []),
        ({"a": 1, "b": 1, "c": 2}, []),  # tiny datasets: nothing stands out
    ],
)
def test_the_rule(counts, flagged):
    assert small_classes(counts) == flagged


def test_a_misspelt_class_folder_is_listed_and_warned_of_everywhere(tmp_path, capsys):
    src = make_imagefolder(tmp_path / "in", {"normal": 100, "pneumonia": 100, "pnuemonia": 2}, size=4)
    out = tmp_path / "out"
    assert main(["shard", "imagefolder", str(src), str(out), "--quiet", "--patient-regex", "img(\\d+)"]) == 0
    captured = capsys.readouterr()
    warning = (
        "class(es) found in the folder names far smaller than the others: 'pnuemonia' (2) beside a median of 100 "
        "inputs; a misspelt class?"
    )
    assert f"warning: {warning}" in captured.err, "said at once, before the shards are built"
    assert "classes found in the folder names (3): normal 100, pneumonia 100, pnuemonia 2" in captured.out
    assert f"warning: {warning}" in captured.out, "and again in the summary"
    assert any(w.startswith(warning) for w in json.loads((out / "dataset.json").read_text())["warnings"])


def test_balanced_folders_are_listed_without_a_warning(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"normal": 6, "tumour": 4}, size=4)
    summary = convert_dataset(
        ImageFolderSource(patient_regex=r"img(\d+)"), str(src), str(tmp_path / "out"), progress=False
    )
    assert "classes found in the folder names (2): normal 6, tumour 4" in summary.table()
    assert not [w for w in summary.warnings if "far smaller" in w]


def _manifest(tmp_path, labels: list[str]):
    rng = np.random.default_rng(0)
    rows = ["path,label,patient_id"]
    for index, label in enumerate(labels):
        write_image(tmp_path / "img" / f"{index}.png", noise_image(rng, 4, 4))
        rows.append(f"img/{index}.png,{label},p{index}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_a_label_typo_in_a_csv_is_warned_of_unless_the_classes_are_declared(tmp_path):
    manifest = _manifest(tmp_path, ["normal"] * 60 + ["pneumonia"] * 60 + ["Pneumonia"])
    summary = convert_dataset(CsvSource(), str(manifest), str(tmp_path / "found"), progress=False)
    assert "classes found in the label column (3): Pneumonia 1, normal 60, pneumonia 60" in summary.table()
    assert any("'Pneumonia' (1) beside a median of 60 inputs" in w for w in summary.warnings)
    declared = CsvSource(classes=("normal", "pneumonia"))
    summary = convert_dataset(declared, str(manifest), str(tmp_path / "declared"), progress=False)
    assert "classes found" not in summary.table() and not [w for w in summary.warnings if "far smaller" in w]
    assert summary.rejected == 1, "the undeclared label is a rejected row, as before"


def test_an_unused_integer_label_is_a_class_without_samples(tmp_path):
    manifest = _manifest(tmp_path, ["0"] * 60 + ["2"] * 60)
    summary = convert_dataset(CsvSource(), str(manifest), str(tmp_path / "out"), ConvertOptions(), progress=False)
    assert "classes found in the label column (3): 0 60, 1 0, 2 60" in summary.table()
    assert any("'1' (0) beside a median of 60 inputs" in w for w in summary.warnings)
