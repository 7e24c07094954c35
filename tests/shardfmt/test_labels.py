"""The multi-label model: finding vectors and masks as JSON members, read back exactly; dataset.json's per-class
positive / negative / unknown counts checked on open; label vectors and masks mixed as Mixup / CutMix need."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from meddiffuse_stream.shardfmt import ShardWriter, encode_sample, make_key
from meddiffuse_stream.shardfmt.labels import (
    LabelCounts,
    count_findings,
    finding_members,
    mix_label_masks,
    mix_label_vectors,
    parse_label_mask,
    parse_label_vector,
    sample_findings,
)
from meddiffuse_stream.shardfmt.manifest import ManifestError, parse_manifest

NAMES = ("Atelectasis", "Cardiomegaly", "Effusion")
SHA = "0" * 64


def test_findings_become_json_members_that_read_back_as_vector_and_mask():
    members = dict(finding_members((1, -1, 0), with_mask=True))
    assert members == {"labels.json": b"[1,0,0]", "label_mask.json": b"[1,0,1]"}
    assert json.loads(members["labels.json"]) == [1, 0, 0]  # what any WebDataset reader decodes
    vector = parse_label_vector(members["labels.json"], "labels.json", NAMES, "k.labels.json")
    mask = parse_label_mask(members["label_mask.json"], "label_mask.json", 3, "k.label_mask.json")
    assert vector.dtype == np.float32 and vector.tolist() == [1, 0, 0] and mask.tolist() == [1, 0, 1]
    assert dict(finding_members((0, 1, 1), with_mask=False)) == {"labels.json": b"[0,1,1]"}


@pytest.mark.parametrize(
    ("findings", "mask", "words"),
    [((1, -1, 0), False, "needs a label mask"), ((1, 2, 0), True, "1, 0 or -1"), ((1, 0.5, 0), True, "1, 0 or -1")],
)
def test_findings_that_cannot_be_written_are_refused(findings, mask, words):
    with pytest.raises(ValueError, match=words):
        finding_members(findings, with_mask=mask)


def test_vectors_written_elsewhere_are_read_npy_and_finding_names_included():
    buffer = io.BytesIO()
    np.save(buffer, np.array([0, 1, 1], np.uint8))
    assert parse_label_vector(buffer.getvalue(), "npy", NAMES, "k.npy").tolist() == [0, 1, 1]
    assert parse_label_vector(b'["Effusion", "Atelectasis"]', "labels.json", NAMES, "k").tolist() == [1, 0, 1]
    assert parse_label_vector(b'{"labels": [0.25, 0, 1]}', "json", NAMES, "k").tolist() == [0.25, 0, 1]
    assert parse_label_vector(b"[1, 0, 0, 1, 1]", "json", (), "k").tolist() == [1, 0, 0, 1, 1]  # no names known


@pytest.mark.parametrize(
    ("data", "suffix", "words"),
    [
        (b"[1, 0]", "labels.json", "2 labels, but the dataset has 3 classes"),
        (b"[1, 0, 2]", "labels.json", "must lie in"),
        (b'["Hernia"]', "labels.json", "not one of class_names"),
        (b'"Effusion"', "labels.json", "JSON list of numbers"),
        (b"[true, false, true]", "labels.json", "JSON list of numbers"),
        (b"\x93NUMPY garbage", "npy", "not a numeric .npy"),
    ],
)
def test_a_bad_label_member_is_an_error_naming_the_member(data, suffix, words):
    with pytest.raises(ValueError, match=words) as error:
        parse_label_vector(data, suffix, NAMES, "shard-0.tar:k7.labels")
    assert "k7.labels" in str(error.value)


def test_a_pickled_npy_is_refused_never_unpickled():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, 0, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"not a numeric \.npy"):
        parse_label_vector(buffer.getvalue(), "npy", NAMES, "k.npy")


def test_a_sample_s_members_give_its_vector_and_mask_or_say_which_is_missing():
    members = {"png": b"", **dict(finding_members((0, -1, 1), with_mask=True))}
    vector, mask = sample_findings(members, "k1", NAMES)
    assert vector.tolist() == [0, 0, 1] and mask.tolist() == [1, 0, 1]
    vector, mask = sample_findings({"npy": _npy([1, 0, 0]), "labels.json": b"[0,0,1]"}, "k2", NAMES, "npy")
    assert vector.tolist() == [1, 0, 0] and mask is None
    with pytest.raises(ValueError, match=r"k3: missing label: no \.labels\.json, \.labels\.npy, \.npy member"):
        sample_findings({"png": b"", "cls": b"1"}, "k3", NAMES)
    with pytest.raises(ValueError, match=r"k4\.label_mask\.json: label mask of 2 entries"):
        sample_findings({"labels.json": b"[0,0,1]", "label_mask.json": b"[1,1]"}, "k4", NAMES)


def _npy(values) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(values, np.float32))
    return buffer.getvalue()


def test_masks_hold_zero_or_one_only():
    with pytest.raises(ValueError, match="0 \\(unknown\\) or 1"):
        parse_label_mask(b"[1, 0.5, 1]", "label_mask.json", 3, "k")


def test_counts_per_class():
    counts = count_findings(np.array([[1, 0, -1], [1, 1, 0], [0, -1, -1]]), NAMES)
    assert counts == {
        "Atelectasis": LabelCounts(2, 1, 0),
        "Cardiomegaly": LabelCounts(1, 1, 1),
        "Effusion": LabelCounts(0, 1, 2),
    }


def test_mixing_mixes_each_finding_and_keeps_only_what_both_images_know():
    a, b = np.array([[1.0, 0.0, 1.0]]), np.array([[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(mix_label_vectors(a, b, 0.7), [[0.7, 0.0, 1.0]])
    keep = np.array([[0.25], [1.0]])
    both = mix_label_vectors(np.vstack([a, a]), np.vstack([b, b]), keep)
    np.testing.assert_allclose(both, [[0.25, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert mix_label_masks(np.array([1, 0, 1]), np.array([1, 1, 0])).tolist() == [1, 0, 0]


def test_a_multi_label_sample_has_no_class_member_and_its_names_fit_a_tar_header():
    key = make_key("x" * 200)
    sample = encode_sample(key, np.zeros((4, 4), np.uint8), None, {}, findings=(1, -1, 0), label_mask=True)
    names = [name for name, _ in sample.members]
    assert [n.split(".", 1)[1] for n in names] == ["png", "labels.json", "label_mask.json", "json"]
    stream = io.BytesIO()
    writer = ShardWriter(stream)
    writer.add(sample)
    writer.close()
    with tarfile.open(fileobj=io.BytesIO(stream.getvalue())) as archive:
        assert archive.getnames() == names  # the longest name (key + ".label_mask.json") fits USTAR's 100 bytes
    with pytest.raises(ValueError, match="findings, not a class label"):
        encode_sample("k", np.zeros((4, 4), np.uint8), 1, {}, findings=(1, 0, 0))


def _document(**changes) -> dict:
    counts = {"positive": 3, "negative": 5, "unknown": 2}
    document = {
        "format_version": 1,
        "task": "multi_label",
        "class_names": list(NAMES),
        "label_mask": True,
        "shards": [{"path": "train/train-000000.tar", "split": "train", "samples": 10, "bytes": 20480, "sha256": SHA}],
        "splits": {"train": {"samples": 10, "labels": {name: dict(counts) for name in NAMES}}},
    }
    document.update(changes)
    return document


def _parse(document: dict):
    return parse_manifest(json.dumps(document).encode(), "ds/dataset.json")


def test_a_multi_label_manifest_reads_back_its_counts():
    manifest = _parse(_document())
    assert manifest.task == "multi_label" and manifest.label_mask
    assert manifest.label_counts("train") == [LabelCounts(3, 5, 2)] * 3
    assert manifest.class_counts("train") is None and manifest.label_counts("val") is None
    again = _parse(json.loads(json.dumps(manifest.to_document())))
    assert again.label_counts("train") == manifest.label_counts("train") and again.label_mask


def _counts(**entry) -> dict:
    return {name: {"positive": 3, "negative": 5, "unknown": 2, **entry} for name in NAMES}


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"class_names": []}, "class_names", "names its findings"),
        ({"splits": {"train": {"samples": 10, "classes": {"Atelectasis": 10}}}}, "splits.train.classes", "belong"),
        ({"splits": {"train": {"samples": 10, "labels": _counts(unknown=3)}}}, "splits.train.labels", "not the"),
        ({"splits": {"train": {"samples": 10, "labels": _counts(positive=-1, negative=9)}}}, "labels", "non-neg"),
        ({"splits": {"train": {"samples": 10, "labels": {"Atelectasis": {}}}}}, "labels", "do not match"),
        ({"label_mask": False}, "label_mask", "counts unknown labels"),
        ({"task": "multi_class", "splits": None}, "label_mask", "only a multi_label dataset"),
        ({"task": "multi_class"}, "splits.train.labels", "does not belong to a multi_class dataset"),
    ],
)
def test_a_bad_multi_label_manifest_names_the_field(changes, field, words):
    with pytest.raises(ManifestError, match=words) as error:
        _parse(_document(**changes))
    assert "ds/dataset.json" in str(error.value) and field in str(error.value)
