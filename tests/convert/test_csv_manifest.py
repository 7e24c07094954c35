"""CSV manifests as they come from spreadsheets and hospital exports: no column can overwrite or shift anything."""

import json

import numpy as np
import pytest
from builders import noise_image, write_image
from readback import check_accounting, load_dataset

from meddiffuse_stream.convert import ConvertOptions, CsvSource, convert_dataset
from meddiffuse_stream.convert.csv_rows import MAX_CELL_CHARS


def _images(root, names):
    rng = np.random.default_rng(0)
    for name in names:
        write_image(root / f"{name}.png", noise_image(rng, 8, 8))


def _convert(tmp_path, text: str | bytes, source=None, **options):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
    convert_dataset(
        source or CsvSource(), str(manifest), str(tmp_path / "out"), ConvertOptions(**options), progress=False
    )
    dataset = load_dataset(tmp_path / "out")
    check_accounting(dataset)
    return dataset


def _reasons(dataset) -> list[str]:
    return sorted(r["reason"] for r in dataset["rejects"])


def test_columns_named_like_pipeline_fields_are_kept_under_their_names_and_change_nothing(tmp_path):
    _images(tmp_path, "abcdefgh")
    rows = "".join(
        f"{n}.png,{'x' if i % 2 else 'y'},test,k{i},99,bogus.tar,{n}.jpg,1,p{i}\n" for i, n in enumerate("abcdefgh")
    )
    dataset = _convert(
        tmp_path,
        "path,label,split,key,offset,shard,source,height,patient_id\n" + rows,
        splits={"train": 0.5, "val": 0.5},
    )
    index = dataset["index"]
    assert {row["split"] for row in index} <= {"train", "val"}  # the pipeline's split, not the column's "test"
    assert all(
        row["columns"]
        == {
            "split": "test",
            "key": f"k{row['patient_id'][1:]}",
            "offset": "99",
            "shard": "bogus.tar",
            "source": row["source"][:1] + ".jpg",
            "height": "1",
        }
        for row in index
    )
    for row in index:
        assert row["shard"].endswith(".tar") and row["shard"] != "bogus.tar" and row["height"] == 8
        assert row["source"] == row["key"] + ".png"
        meta = json.loads(dataset["samples"][row["key"]]["json"])
        assert meta["split"] == row["split"] and meta["columns"]["split"] == "test"
    splits = {s: info["samples"] for s, info in dataset["info"]["splits"].items()}
    assert splits == {"train": 4, "val": 4}


def test_blank_and_unknown_labels_are_rejected_per_row_without_shifting_the_others(tmp_path):
    _images(tmp_path, "abcd")
    dataset = _convert(tmp_path, "path,label\na.png,normal\nb.png,\nc.png,pneumonia\nd.png,  \n")
    assert dataset["info"]["class_names"] == ["normal", "pneumonia"]
    assert _reasons(dataset) == ["line 3: blank label", "line 5: blank label"]
    labels = {row["source"]: row["label"] for row in dataset["index"]}
    assert labels == {"a.png": 0, "c.png": 1}
    dataset = _convert(tmp_path, "path,label\na.png,normal\nb.png,covid\n", CsvSource(classes=("normal", "pn")))
    assert _reasons(dataset) == ["line 3: label 'covid' is not one of ['normal', 'pn'] nor an index below 2"]


def test_names_mixed_with_integers_are_refused_asking_for_classes(tmp_path):
    _images(tmp_path, "abc")
    with pytest.raises(
        ValueError,
        match=r"labels mix class names \('normal' on line 2\) and integers \('1' on line "
        r"3\); pass --classes",
    ):
        _convert(tmp_path, "path,label\na.png,normal\nb.png,1\nc.png,pneumonia\n")
    dataset = _convert(
        tmp_path, "path,label\na.png,normal\nb.png,1\nc.png,pneumonia\n", CsvSource(classes=("normal", "pneumonia"))
    )
    assert {row["source"]: row["label"] for row in dataset["index"]} == {"a.png": 0, "b.png": 1, "c.png": 1}


def test_an_integer_typo_is_a_rejected_row_not_a_million_classes(tmp_path):
    _images(tmp_path, "abcde")
    text = "path,label\na.png,0\nb.png,1\nc.png,1000000\nd.png,1000000000\ne.png,-1\n"
    dataset = _convert(tmp_path, text)
    assert dataset["info"]["class_names"] == ["0", "1"]
    reasons = _reasons(dataset)
    assert reasons[0].startswith("line 4: label 1000000 is far above the other labels (more than 15)")
    assert reasons[1].startswith("line 5: label 1000000000 is far above")
    assert reasons[2] == "line 6: label -1 is negative"
    dataset = _convert(tmp_path, "path,label\na.png,0\nb.png,2\nc.png,5\n", CsvSource(classes=("a", "b", "c")))
    assert _reasons(dataset) == ["line 4: label '5' is not one of ['a', 'b', 'c'] nor an index below 3"]


def test_undecodable_bytes_reject_their_row_and_encoding_reads_them(tmp_path):
    _images(tmp_path, ["a", "caf\u00e9", "c"])
    raw = b"path,label,site\na.png,x,ok\ncaf\xe9.png,y,ok\nc.png,y,Z\xfcrich\n"  # Latin-1 bytes in a UTF-8 file
    dataset = _convert(tmp_path, raw)
    assert _reasons(dataset) == [
        "line 3: byte 0xe9 in column 'path' is not valid utf-8; pass --encoding with the manifest's encoding "
        "(e.g. --encoding latin-1)",
        "line 4: byte 0xfc in column 'site' is not valid utf-8; pass --encoding with the manifest's encoding "
        "(e.g. --encoding latin-1)",
    ]
    dataset = _convert(tmp_path, raw, CsvSource(encoding="latin-1"))
    assert dataset["info"]["counts"]["converted"] == 3
    assert {row["columns"]["site"] for row in dataset["index"]} == {"ok", "Z\u00fcrich"}
    with pytest.raises(ValueError, match="--encoding 'klingon' is not an encoding"):
        _convert(tmp_path, raw, CsvSource(encoding="klingon"))


def test_oversized_cells_too_many_fields_and_nul_bytes_reject_their_row(tmp_path):
    _images(tmp_path, "abcd")
    huge = "x" * 200_000
    text = f'path,label,note\na.png,y,ok\nb.png,y,"{huge}"\nc.png,y,ok,extra\nd.png,y,nul\x00here\n'
    dataset = _convert(tmp_path, text)
    assert _reasons(dataset) == [
        f"line 3: column 'note' holds 200000 characters, over the limit of {MAX_CELL_CHARS} (an unclosed quote?)",
        "line 4: 4 fields, but the header has 3 columns",
        "line 5: a NUL byte in column 'note'",
    ]
    assert dataset["info"]["counts"]["converted"] == 1


def test_line_numbers_are_true_after_blank_lines_and_quoted_newlines(tmp_path):
    _images(tmp_path, "abc")
    text = '\npath,label,note\n\na.png,y,"two\nlines"\n\n\nmissing.png,y,x\nb.png,,x\r\n\r\nc.png,n,x\n'
    dataset = _convert(tmp_path, text)
    assert _reasons(dataset) == ["line 8: referenced file is missing", "line 9: blank label"]


def test_header_problems_stop_the_run_with_the_manifest_named(tmp_path):
    _images(tmp_path, "a")
    with pytest.raises(ValueError, match="column 'label' appears twice"):
        _convert(tmp_path, "path,label,label\na.png,x,y\n")
    with pytest.raises(ValueError, match="header lacks column"):
        _convert(tmp_path, "file,class\na.png,x\n")
    with pytest.raises(ValueError, match="is empty"):
        _convert(tmp_path, "\n\n")
    dataset = _convert(tmp_path, ",path,label\n0,a.png,x\n")  # pandas' to_csv writes an unnamed index column
    assert dataset["index"][0]["columns"] == {"Unnamed: 0": "0"}


def test_paths_outside_the_manifest_folder_and_absolute_paths_work_locally(tmp_path):
    _images(tmp_path / "images", "ab")
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text(f"path,label\n../images/a.png,x\n{tmp_path}/images/b.png,y\n")
    convert_dataset(CsvSource(), str(manifest), str(tmp_path / "out"), ConvertOptions(), progress=False)
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["counts"]["converted"] == 2


def test_train_fraction_subset_of_a_manifest_with_a_split_column_keeps_train_shards(tmp_path):
    """Before, a ``split`` column overwrote the index's split: the subset found no train rows."""
    from meddiffuse_stream.jobs.subset import subset_dataset

    names = [f"i{n:02d}" for n in range(20)]
    _images(tmp_path, names)
    rows = "".join(f"{n}.png,{'ab'[i % 2]},test\n" for i, n in enumerate(names))
    _convert(tmp_path, "path,label,split\n" + rows, splits={"train": 0.5, "test": 0.5})
    info = subset_dataset(str(tmp_path / "out"), str(tmp_path / "half"), 0.5)
    assert info.split_stats["train"].samples == 5 and any(s.split == "train" for s in info.shards)
