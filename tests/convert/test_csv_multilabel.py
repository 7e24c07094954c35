"""``csv --label-columns`` and ``--labels-column --label-separator`` on real rows (CheXpert's observation columns,
NIH's ``Finding Labels``), and each bad cell as one reject naming its line and column."""

from __future__ import annotations

import json

import pytest
from readback import load_dataset
from xray_tables import CHEXPERT_TABLE, NIH_TABLE, read_rows, write_csv, write_grey

from meddiffuse_stream.convert import ConvertOptions, CsvSource, convert_dataset
from meddiffuse_stream.convert.csv_labels import MultiLabelColumns


def _convert(manifest, out, multi, classes=None):
    source = CsvSource(classes=classes, multi_label=multi)
    summary = convert_dataset(source, str(manifest), str(out), ConvertOptions(splits={"train": 1.0}), progress=False)
    return summary, load_dataset(out)


def _vectors(dataset) -> dict[str, tuple[list[int], list[int] | None]]:
    found = {}
    for sample in dataset["samples"].values():
        mask = json.loads(sample["label_mask.json"]) if "label_mask.json" in sample else None
        found[json.loads(sample["json"])["source"]] = (json.loads(sample["labels.json"]), mask)
    return found


@pytest.mark.parametrize(("blank", "uncertain"), [("unknown", "ignore"), ("negative", "ones"), ("negative", "zeros")])
def test_label_columns_on_chexpert_rows(tmp_path, blank, uncertain):
    header, rows = read_rows(CHEXPERT_TABLE)
    rows = rows[:40]
    columns = header[5:]
    manifest = tmp_path / "m.csv"
    write_csv(
        manifest,
        ["path", "patient_id", *columns],
        [[f"i{n}.png", r[0].split("/")[2], *r[5:]] for n, r in enumerate(rows)],
    )
    for n in range(len(rows)):
        write_grey(tmp_path / f"i{n}.png")
    multi = MultiLabelColumns(tuple(columns), blank=blank, uncertain=uncertain)
    _summary, dataset = _convert(manifest, tmp_path / "out", multi)
    assert dataset["info"]["class_names"] == columns and dataset["info"]["task"] == "multi_label"
    blank_value = None if blank == "unknown" else 0
    minus_one = {"ignore": None, "ones": 1, "zeros": 0}[uncertain]
    vectors = _vectors(dataset)
    for n, row in enumerate(rows):
        expected = [{"1.0": 1, "0.0": 0, "": blank_value, "-1.0": minus_one}[c] for c in row[5:]]
        labels, mask = vectors[f"i{n}.png"]
        assert labels == [v or 0 for v in expected]
        has_unknown = dataset["info"]["label_mask"]
        assert mask == ([int(v is not None) for v in expected] if has_unknown else None)
    assert dataset["info"]["label_mask"] == (blank == "unknown" or uncertain == "ignore")
    assert all("columns" not in json.loads(s["json"]) for s in dataset["samples"].values())  # all consumed


def test_labels_column_on_nih_rows_with_and_without_classes(tmp_path):
    _header, rows = read_rows(NIH_TABLE)
    rows = rows[:60]
    manifest = tmp_path / "m.csv"
    write_csv(manifest, ["path", "findings", "patient_id"], [[r[0], r[1], r[3]] for r in rows])
    for row in rows:
        write_grey(tmp_path / row[0])
    _summary, dataset = _convert(manifest, tmp_path / "out", MultiLabelColumns(names_column="findings"))
    names = dataset["info"]["class_names"]
    assert names == sorted({f for r in rows for f in r[1].split("|")} - {"No Finding"})
    vectors = _vectors(dataset)
    for row in rows:
        assert vectors[row[0]] == ([int(n in row[1].split("|")) for n in names], None)
    fixed = ("Effusion", "Cardiomegaly", "Hernia", "Emphysema", "Infiltration", "Atelectasis", "Mass", "Nodule")
    summary, dataset = _convert(manifest, tmp_path / "out2", MultiLabelColumns(names_column="findings"), fixed)
    assert dataset["info"]["class_names"] == list(fixed)
    outside = [r for r in rows if set(r[1].split("|")) - {*fixed, "No Finding"}]
    assert summary.rejected == len(outside) and summary.converted == len(rows) - len(outside)
    assert all("is not one of --classes" in r["reason"] for r in dataset["rejects"])


def test_each_bad_cell_is_a_reject_naming_line_and_column(tmp_path):
    for name in "abcdef":
        write_grey(tmp_path / f"{name}.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,Edema,Mass\na.png,1,0\nb.png,yes,0\nc.png,1,0.5\nd.png,,-1\n")
    _summary, dataset = _convert(manifest, tmp_path / "o1", MultiLabelColumns(("Edema", "Mass")))
    assert sorted(r["reason"] for r in dataset["rejects"]) == [
        "line 3: column 'Edema': 'yes' is not 1, 0, -1 or blank",
        "line 4: column 'Mass': '0.5' is not 1, 0, -1 or blank",
    ]
    assert _vectors(dataset) == {"a.png": ([1, 0], [1, 1]), "d.png": ([0, 0], [0, 0])}
    manifest.write_text(
        "path,findings\na.png,Edema|Mass\nb.png,\nc.png,No Finding|Mass\nd.png,No Finding\ne.png,Edema;Mass\n"
    )
    _summary, dataset = _convert(manifest, tmp_path / "o2", MultiLabelColumns(names_column="findings"))
    assert sorted(r["reason"] for r in dataset["rejects"]) == [
        "line 3: column 'findings': blank; list the findings, or write 'No Finding' for an image with none",
        "line 4: column 'findings': 'No Finding' together with findings ['Mass']",
    ]
    assert dataset["info"]["class_names"] == ["Edema", "Edema;Mass", "Mass"]  # the separator is "|": said plainly
    assert _vectors(dataset)["d.png"] == ([0, 0, 0], None)


@pytest.mark.parametrize(
    ("multi", "classes", "words"),
    [
        (lambda: MultiLabelColumns(("A",), names_column="f"), None, "either --label-columns"),
        (lambda: MultiLabelColumns(("A", "A")), None, "names a column twice"),
        (lambda: MultiLabelColumns(("A",), blank="maybe"), None, "--blank-label must be one of"),
        (lambda: MultiLabelColumns(("Edema", "Mass")), ("x",), "--classes and --label-columns do not go together"),
        (lambda: MultiLabelColumns(("Edema", "Lung")), None, r"header lacks column\(s\) \['Lung'\]"),
    ],
)
def test_wrong_options_stop_with_what_to_do(tmp_path, multi, classes, words):
    write_grey(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,Edema,Mass\na.png,1,0\n")
    with pytest.raises(ValueError, match=words):
        _convert(manifest, tmp_path / "out", multi(), classes)
