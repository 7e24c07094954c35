"""``shard chexpert`` on real rows of CheXpert's ``train.csv`` (the published columns), JPEGs generated where each
``Path`` says: blank = negative and known, -1 per ``--uncertain``, patients whole, ``valid.csv`` as val."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from readback import load_dataset, pixels
from xray_tables import (
    CHEXPERT_TABLE,
    as_valid,
    chexpert_patient,
    make_chexpert,
    pixels_of,
    read_rows,
    rows_of_patients,
    write_csv,
    write_grey,
)

from meddiffuse_stream.convert import CheXpertSource, ConvertOptions, convert_dataset

CELL = {"1.0": 1, "0.0": 0, "": 0}  # as the labeller's authors read a blank: not mentioned, negative
POLICY = {"ignore": None, "ones": 1, "zeros": 0}


def _sample(seed: int = 0, count: int = 150):
    header, rows = read_rows(CHEXPERT_TABLE)
    assert header[:5] == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] and len(header) == 19
    train = rows_of_patients(rows[:20000], chexpert_patient, count, seed)
    valid = as_valid(rows_of_patients(rows[20000:40000], chexpert_patient, count // 3, seed))
    return header, train, valid


def _convert(src, out, source, **options):
    summary = convert_dataset(source, str(src), str(out), ConvertOptions(**options), progress=False)
    return summary, load_dataset(out)


def _check(dataset: dict, rows: list[list[str]], header: list[str], policy: str) -> None:
    """Each sample's vector and mask equal its own row's cells under ``policy``, pixels its own file's."""
    names = dataset["info"]["class_names"]
    assert names == header[5:]
    by_path = {row[0].split("/", 1)[1]: row for row in rows}
    assert len(by_path) == len(dataset["samples"])
    for key, sample in dataset["samples"].items():
        meta = json.loads(sample["json"])
        row = by_path[meta["source"]]
        cells = [row[header.index(name)] for name in names]
        expected = [CELL.get(c, POLICY[policy]) for c in cells]
        assert json.loads(sample["labels.json"]) == [v or 0 for v in expected], key
        if policy == "ignore":
            assert json.loads(sample["label_mask.json"]) == [int(v is not None) for v in expected], key
        else:
            assert "label_mask.json" not in sample
        assert meta["patient_id"] == row[0].split("/")[2] and meta["sex"] == row[1] and meta["age"] == int(row[2])
        assert (meta["frontal_lateral"], meta["ap_pa"]) == (row[3], row[4] or None)
        decoded = pixels(sample["png"]).astype(int)
        assert np.abs(decoded - pixels_of(row[0].rsplit("/", 1)[-1]).astype(int)).mean() < 12  # a JPEG of it


def test_official_split_uncertain_ignored_vectors_masks_and_counts(tmp_path):
    header, train, valid = _sample()
    src = make_chexpert(tmp_path, header, train, valid)
    summary, dataset = _convert(src, tmp_path / "out", CheXpertSource(uncertain="ignore", official=True))
    assert (summary.found, summary.converted, summary.rejected) == (len(train) + len(valid), len(train) + len(valid), 0)
    _check(dataset, train + valid, header, "ignore")
    split_of = {r["source"]: r["split"] for r in dataset["index"]}
    assert {p for p, s in split_of.items() if s == "val"} == {r[0].split("/", 1)[1] for r in valid}
    assert set(split_of.values()) == {"train", "val"}
    info = dataset["info"]
    assert info["task"] == "multi_label" and info["label_mask"] is True and info["official_splits"] is True
    for column, name in enumerate(header[5:], start=5):
        counts = info["splits"]["train"]["labels"][name]
        assert counts["unknown"] == sum(row[column] == "-1.0" for row in train)
        assert counts["positive"] == sum(row[column] == "1.0" for row in train)
    assert "pos/unk" in summary.table()


@pytest.mark.parametrize("policy", ["ones", "zeros"])
def test_uncertain_as_ones_or_zeros_and_no_mask(tmp_path, policy):
    header, train, valid = _sample(seed=1, count=60)
    src = make_chexpert(tmp_path, header, train, valid)
    _summary, dataset = _convert(src, tmp_path / "out", CheXpertSource(uncertain=policy), seed=4)
    _check(dataset, train + valid, header, policy)
    assert dataset["info"]["label_mask"] is False and dataset["info"]["official_splits"] is False
    splits: dict[str, set[str]] = defaultdict(set)
    for row in dataset["index"]:
        splits[row["patient_id"]].add(row["split"])
    assert splits and all(len(s) == 1 for s in splits.values())  # patient-level fractions


def test_paths_resolve_in_a_renamed_folder_and_bad_rows_are_one_line_each(tmp_path):
    header, train, valid = _sample(seed=2, count=12)
    folder = make_chexpert(tmp_path, header, train, valid).rename(tmp_path / "chexpert")
    bad = [
        [train[0][0].replace("view1", "view7"), "Male", "50", "Frontal", "PA", *["2.0"] + [""] * 13],
        ["CheXpert-v1.0-small/train/notapatient/x.jpg", "Male", "50", "Frontal", "PA", *[""] * 14],
        train[1],
        [train[0][0].replace("patient", "patient9"), "Male", "50", "Frontal", "PA", *[""] * 14],
    ]
    write_csv(folder / "train.csv", header, train + bad)
    write_grey(folder / "train" / "patient99999" / "study1" / "view1_frontal.jpg", "JPEG")  # in no CSV
    summary, dataset = _convert(folder, tmp_path / "out", CheXpertSource(official=True))
    line = len(train) + 2
    assert sorted(r["reason"] for r in dataset["rejects"]) == sorted(
        [
            "image not found below SRC (not downloaded or not extracted yet?)",  # view7: its '2.0' is never read
            "image not found below SRC (not downloaded or not extracted yet?)",
            f"line {line + 1}: column 'Path' of train.csv: expected "
            "<folder>/train|valid/patientN/studyN/viewN_frontal.jpg",
            f"line {line + 2}: column 'Path' of train.csv: listed again (first on train.csv line 3)",
            "no row in train.csv or valid.csv",
        ]
    )
    assert summary.found == len(train) + len(valid) + len(bad) + 1
    assert summary.converted == len(train) + len(valid)


def test_a_bad_cell_of_an_image_that_exists_names_line_and_column(tmp_path):
    header, train, valid = _sample(seed=3, count=6)
    train[2] = [*train[2][:7], "yes", *train[2][8:]]
    src = make_chexpert(tmp_path, header, train, valid)
    _summary, dataset = _convert(src, tmp_path / "out", CheXpertSource(official=True))
    assert [r["reason"] for r in dataset["rejects"]] == [
        f"line 4: column '{header[7]}' of train.csv: 'yes' is not 1, 0, -1 or blank"
    ]


def test_a_missing_csv_or_column_stops_with_what_to_do(tmp_path):
    header, train, valid = _sample(seed=3, count=6)
    src = make_chexpert(tmp_path, header, train, valid)
    (src / "valid.csv").unlink()
    with pytest.raises(ValueError, match=r"no train\.csv and valid\.csv found"):
        _convert(src, tmp_path / "o1", CheXpertSource(official=True))
    write_csv(src / "train.csv", header[:-1], [row[:-1] for row in train])
    with pytest.raises(ValueError, match=r"lacks the observation column\(s\) \['Support Devices'\]"):
        _convert(src, tmp_path / "o2", CheXpertSource())


@pytest.mark.slow
def test_the_whole_real_table_with_a_few_images(tmp_path):
    header, rows = read_rows(CHEXPERT_TABLE)
    present = rows[::4000]
    folder = tmp_path / "CheXpert-v1.0-small"
    write_csv(folder / "train.csv", header, rows)
    for row in present:
        write_grey(tmp_path / row[0], "JPEG")
    summary, dataset = _convert(folder, tmp_path / "out", CheXpertSource(uncertain="ignore"))
    assert (summary.found, summary.converted) == (len(rows), len(present))
    _check(dataset, present, header, "ignore")
