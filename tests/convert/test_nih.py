"""``shard nih`` on real rows of NIH ChestX-ray14's table, with generated pixels laid out as the release ships them:
every finding vector equals its row, no patient is in two splits, every bad row is one line naming line and column."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from readback import load_dataset, pixels
from xray_tables import (
    NIH_BOXES,
    NIH_TABLE,
    make_nih,
    nih_patient,
    pixels_of,
    read_rows,
    rows_of_patients,
    write_csv,
    write_grey,
)

from meddiffuse_stream.convert import ConvertOptions, NihSource, convert_dataset


def _convert(src, out, source=None, **options):
    summary = convert_dataset(source or NihSource(), str(src), str(out), ConvertOptions(**options), progress=False)
    return summary, load_dataset(out)


def _check_rows(dataset: dict, rows: dict[str, list[str]]) -> None:
    """Every sample's vector, metadata and pixels against its own row (found again by file name)."""
    names = dataset["info"]["class_names"]
    assert len(names) == 14 and "No Finding" not in names
    for key, sample in dataset["samples"].items():
        meta = json.loads(sample["json"])
        row = rows[meta["source"].rsplit("/", 1)[-1]]
        listed = set(row[1].split("|"))
        assert json.loads(sample["labels.json"]) == [int(name in listed) for name in names], key
        assert "cls" not in sample and "label_mask.json" not in sample  # NIH has no unknowns
        assert (meta["patient_id"], meta["follow_up"], meta["age"], meta["sex"], meta["view"]) == (
            f"{int(row[3]):08d}",
            int(row[2]),
            int(row[4]),
            row[5],
            row[6],
        )
        assert meta["original_size"] == [int(row[7]), int(row[8])]
        assert np.array_equal(pixels(sample["png"]), pixels_of(meta["source"].rsplit("/", 1)[-1]))


def _splits_of_patients(dataset: dict) -> dict[str, set[str]]:
    splits: dict[str, set[str]] = defaultdict(set)
    for row in dataset["index"]:
        splits[row["patient_id"]].add(row["split"])
    return splits


def test_real_rows_convert_with_their_findings_metadata_and_whole_patients(tmp_path):
    header, rows = read_rows(NIH_TABLE)
    chosen = rows_of_patients(rows, nih_patient, 300, seed=1)
    src = make_nih(tmp_path / "nih", header, chosen, chosen)
    summary, dataset = _convert(src, tmp_path / "out", seed=3)
    assert (summary.found, summary.converted, summary.rejected) == (len(chosen), len(chosen), 0)
    _check_rows(dataset, {row[0]: row for row in chosen})
    assert all(len(splits) == 1 for splits in _splits_of_patients(dataset).values())
    info = dataset["info"]
    assert info["task"] == "multi_label" and info["label_mask"] is False
    for split, stats in info["splits"].items():
        keys = {r["source"].rsplit("/", 1)[-1] for r in dataset["index"] if r["split"] == split}
        for name, counts in stats["labels"].items():
            positives = sum(1 for row in chosen if row[0] in keys and name in row[1].split("|"))
            assert counts == {"positive": positives, "negative": len(keys) - positives, "unknown": 0}
    assert "finding" in summary.table() and "Effusion" in summary.table()


def test_the_whole_table_with_a_few_images_accounts_for_every_row(tmp_path):
    header, rows = read_rows(NIH_TABLE)
    present = rows[::2000]
    src = make_nih(tmp_path / "nih", header, rows, present)
    summary, dataset = _convert(src, tmp_path / "out")
    assert (summary.found, summary.converted, summary.rejected) == (len(rows), len(present), len(rows) - len(present))
    assert summary.reject_reasons == {
        "image not found below SRC (not downloaded or not extracted yet?)": summary.rejected
    }
    _check_rows(dataset, {row[0]: row for row in present})


def test_every_bad_row_is_one_line_naming_line_and_column_and_nothing_is_lost(tmp_path):
    header, rows = read_rows(NIH_TABLE)
    good = rows[:6]
    bad = [
        ["00000100_000.png", "", "0", "100", "50", "M", "PA", "2500", "2048", "0.14", "0.14"],
        ["00000101_000.png", "Cardiomegaly|Lung Nodule", "0", "101", "50", "M", "PA", "2500", "2048", "0.14", "0.14"],
        ["00000102_000.png", "No Finding|Mass", "0", "102", "50", "F", "AP", "2500", "2048", "0.14", "0.14"],
        ["00000103_000.png", "Mass", "0", "104", "50", "F", "AP", "2500", "2048", "0.14", "0.14"],
        ["00000105_000.png", "Mass", "0", "x105", "50", "F", "AP", "2500", "2048", "0.14", "0.14"],
        good[0],
        ["00000106_000.png", "Edema", "zero", "106", "old", "?", "", "", "", "", ""],
    ]
    src = make_nih(tmp_path / "nih", header, good + bad, good + bad)
    write_grey(src / "images_002" / "images" / "99999999_000.png")  # an image with no row
    write_grey(src / "images_009" / "images" / good[1][0])  # the same file name twice
    summary, dataset = _convert(src, tmp_path / "out", splits={"train": 0.5, "val": 0.5})
    reasons = sorted(r["reason"] for r in dataset["rejects"])
    assert reasons == sorted(
        [
            "line 8: column 'Finding Labels' of Data_Entry_2017_v2020.csv: blank; each image lists its findings "
            "or 'No Finding'",
            "line 9: column 'Finding Labels' of Data_Entry_2017_v2020.csv: 'Lung Nodule' is not one of the 14 "
            "findings ['Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule', 'Pneumonia', "
            "'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia'] nor "
            "'No Finding'",
            "line 10: column 'Finding Labels' of Data_Entry_2017_v2020.csv: 'No Finding|Mass' joins 'No Finding' "
            "with findings",
            "line 11: column 'Patient ID' of Data_Entry_2017_v2020.csv: 104, but the image name says patient 103",
            "line 12: column 'Patient ID' of Data_Entry_2017_v2020.csv: 'x105' is not a number",
            f"line 13: column 'Image Index' of Data_Entry_2017_v2020.csv: {good[0][0]} is listed again (first on "
            "line 2)",
            "no row in Data_Entry_2017_v2020.csv",
            f"a second image named {good[1][0]} (the first is images_001/images/{good[1][0]}): not used",
        ]
    )
    assert all("\n" not in reason for reason in reasons)
    assert (summary.found, summary.converted) == (len(good) + len(bad) + 2, len(good) + 1)
    kept = {
        json.loads(s["json"])["source"].rsplit("/", 1)[-1]: json.loads(s["json"]) for s in dataset["samples"].values()
    }
    assert kept["00000106_000.png"]["age"] is None and kept["00000106_000.png"]["follow_up"] is None
    assert summary.notes["NIH rows whose 'Patient Age' is not an age (kept, age null)"] == 1


def test_official_lists_give_test_and_a_patient_level_val_carved_from_train_val(tmp_path):
    header, rows = read_rows(NIH_TABLE)
    chosen = rows_of_patients(rows, nih_patient, 240, seed=5)
    patients = sorted({nih_patient(r) for r in chosen})
    test_patients = set(patients[::4])
    src = make_nih(tmp_path / "nih", header, chosen, chosen)
    test = [r[0] for r in chosen if nih_patient(r) in test_patients]
    train_val = [r[0] for r in chosen if nih_patient(r) not in test_patients][1:]  # the first is in neither list
    (src / "test_list.txt").write_text("\n".join(test) + "\n")
    (src / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    source = NihSource(official=True, val_fraction=0.25, seed=2)
    _summary, dataset = _convert(src, tmp_path / "out", source)
    split_of = {r["source"].rsplit("/", 1)[-1]: r["split"] for r in dataset["index"]}
    assert {n for n, s in split_of.items() if s == "test"} == set(test)
    assert {n for n, s in split_of.items() if s in ("train", "val")} == set(train_val)
    assert all(len(splits) == 1 for splits in _splits_of_patients(dataset).values())
    val = sum(1 for s in split_of.values() if s == "val") / len(train_val)
    assert 0.1 < val < 0.4 and dataset["info"]["official_splits"] is True
    assert [r["reason"] for r in dataset["rejects"]] == [
        "in neither test_list.txt nor train_val_list.txt (--split official)"
    ]
    (src / "test_list.txt").unlink()
    with pytest.raises(ValueError, match=r"--split official: test_list\.txt is not below"):
        _convert(src, tmp_path / "out2", source)


def test_the_2017_table_layout_and_the_boxes_table(tmp_path):
    header, rows = read_rows(NIH_TABLE)
    box_header, boxes = read_rows(NIH_BOXES)
    boxed = {box[0] for box in boxes}
    chosen = [row for row in rows if row[0] in boxed][:5] + rows[:3]
    old = [[*row[:4], f"{int(row[4]):03d}Y", *row[5:], ""] for row in chosen]  # ages "058Y", a trailing comma
    src = tmp_path / "nih"
    write_csv(src / "Data_Entry_2017.csv", [*header, ""], old)
    write_csv(src / "BBox_List_2017.csv", box_header, boxes)
    for row in chosen:
        write_grey(src / "images_001" / "images" / row[0])
    _summary, dataset = _convert(src, tmp_path / "out", splits={"train": 1.0})
    _check_rows(dataset, {row[0]: row for row in chosen})
    for sample in dataset["samples"].values():
        meta = json.loads(sample["json"])
        name = meta["source"].rsplit("/", 1)[-1]
        want = [[float(b[2]), float(b[3]), float(b[4]), float(b[5])] for b in boxes if b[0] == name]
        assert [[b["x"], b["y"], b["w"], b["h"]] for b in meta.get("boxes", [])] == want
        assert all(b["finding"] for b in meta.get("boxes", []))
