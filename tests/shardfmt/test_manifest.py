"""dataset.json is checked field by field on open: every bad manifest is an error naming the file and the field,
shard paths stay inside the dataset root, and nothing a manifest says can make the loader hang or allocate wildly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.shardfmt.manifest import MAX_SPLIT_SAMPLES, ManifestError, parse_manifest, write_manifest
from meddiffuse_stream.shardfmt.shardindex import parse_shard_index
from meddiffuse_stream.storage.location import Location

SHA = "0" * 64


def _doc(**changes) -> dict:
    shard = {"path": "train/train-000000.tar", "split": "train", "samples": 10, "bytes": 20480, "sha256": SHA}
    document = {
        "format_version": 1,
        "class_names": ["a", "b"],
        "num_classes": 2,
        "shards": [shard],
        "splits": {"train": {"samples": 10, "classes": {"a": 4, "b": 6}}},
    }
    document.update(changes)
    return document


def _shard(**changes) -> dict:
    return {**_doc()["shards"][0], **changes}


def _parse(document) -> object:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_manifest(data, "s3://bucket/ds/dataset.json")


# case -> (document, the field the error must name, words it must say)
BAD = {
    "not json": (b"{not json", None, "not a readable dataset.json"),
    "a list": (b"[1, 2]", None, "expected a JSON object"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, None, "nested"),
    "no format_version": ({"shards": []}, "format_version", "missing"),
    "future version": (_doc(format_version=9), "format_version", "upgrade"),
    "no shards": ({"format_version": 1}, "shards", "missing"),
    "shards not a list": (_doc(shards={"a": 1}), "shards", "expected a list"),
    "shard without samples": (_doc(shards=[{"path": "a.tar", "split": "train"}]), "shards[0].samples", "missing"),
    "negative samples": (_doc(shards=[_shard(samples=-5)], splits={}), "shards[0].samples", "negative"),
    "float samples": (_doc(shards=[_shard(samples=2.5)], splits={}), "shards[0].samples", "integer"),
    "bool samples": (_doc(shards=[_shard(samples=True)], splits={}), "shards[0].samples", "integer"),
    "absurd samples": (_doc(shards=[_shard(samples=10**12, bytes=None)], splits={}), "shards[0].samples", "allows"),
    "more samples than bytes": (
        _doc(shards=[_shard(samples=100, bytes=5000)], splits={}),
        "shards[0].samples",
        "cannot fit",
    ),
    "absolute path": (_doc(shards=[_shard(path="/etc/passwd")]), "shards[0].path", "absolute"),
    "other bucket": (_doc(shards=[_shard(path="/other-bucket/key.tar")]), "shards[0].path", "absolute"),
    "url": (_doc(shards=[_shard(path="s3://other-bucket/key.tar")]), "shards[0].path", "absolute"),
    "dot dot": (_doc(shards=[_shard(path="../../x.tar")]), "shards[0].path", "'..'"),
    "dot dot inside": (_doc(shards=[_shard(path="train/../../x.tar")]), "shards[0].path", "'..'"),
    "empty segment": (_doc(shards=[_shard(path="train//x.tar")]), "shards[0].path", "empty"),
    "backslash": (_doc(shards=[_shard(path="..\\x.tar")]), "shards[0].path", "backslash"),
    "listed twice": (_doc(shards=[_shard(), _shard()]), "shards[1].path", "listed twice"),
    "bad sha": (_doc(shards=[_shard(sha256="xyz")]), "shards[0].sha256", "hex"),
    "bad split name": (_doc(shards=[_shard(split="../train")]), "shards[0].split", "split name"),
    "unknown split": (_doc(shards=[_shard(split="val")]), "shards[0].split", "not among splits"),
    "split total": (_doc(splits={"train": {"samples": 9}}), "splits.train.samples", "its shards hold 10"),
    "class counts": (
        _doc(splits={"train": {"samples": 10, "classes": {"a": 1, "b": 2}}}),
        "splits.train.classes",
        "add up",
    ),
    "unknown class": (
        _doc(splits={"train": {"samples": 10, "classes": {"z": 10}}}),
        "splits.train.classes",
        "not among class_names",
    ),
    "class names repeat": (_doc(class_names=["a", "a"], num_classes=2), "class_names", "repeat"),
    "class names not strings": (_doc(class_names=[1, 2]), "class_names", "strings"),
    "num_classes": (_doc(num_classes=3), "num_classes", "class_names has 2"),
    "has_roi": (_doc(has_roi="yes"), "has_roi", "true or false"),
    "too many in a split": (
        _doc(shards=[_shard(path=f"{i}.tar", samples=MAX_SPLIT_SAMPLES, bytes=None) for i in range(2)], splits={}),
        "shards",
        "more than",
    ),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_manifest_is_an_error_naming_file_and_field(case):
    document, field, words = BAD[case]
    with pytest.raises(ManifestError) as info:
        _parse(document)
    message = str(info.value)
    assert message.startswith("s3://bucket/ds/dataset.json: "), message
    assert field is None or f": {field}: " in message, message
    assert words in message, message


def test_a_good_manifest_and_what_it_offers():
    manifest = _parse(_doc())
    assert manifest.splits == ["train"] and manifest.class_names == ("a", "b")
    assert manifest.class_counts("train") == [4, 6] and manifest.shards_of("train")[0].sha256 == SHA


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    with pytest.raises(ManifestError, match=r"shards\[0\]\.path"):
        write_manifest(Location(str(tmp_path)), _doc(shards=[_shard(path="../x.tar")]))
    assert not (tmp_path / "dataset.json").exists()


def _dataset_dir(root: Path, document) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    return root


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "case", ["not json", "no shards", "negative samples", "absurd samples", "dot dot", "absolute path", "listed twice"]
)
def test_the_loader_refuses_a_bad_manifest_before_reading_anything(tmp_path, case):
    document, _, words = BAD[case]
    root = _dataset_dir(tmp_path / "ds", document)
    secret = tmp_path / "x.tar"
    secret.write_bytes(b"outside the dataset")
    with pytest.raises(ManifestError) as info:
        MedDiffuseLoader(str(root), 4)
    assert str(root / "dataset.json") in str(info.value) and words in str(info.value)


def test_location_paths_cannot_leave_the_root(tmp_path):
    location = Location(str(tmp_path))
    for bad in ("/etc/passwd", "../x", "a/../../x", "s3://other/x"):
        with pytest.raises(ValueError, match="not a path below"):
            location.path(bad)
    assert location.path("train/x.tar") == f"{tmp_path}/train/x.tar"


def test_a_shard_index_found_beside_shards_may_not_point_elsewhere():
    document = {"wids_version": 1, "shardlist": [{"url": "/etc/passwd", "nsamples": 1}]}
    with pytest.raises(ManifestError, match=r"shardlist\[0\].url.*absolute"):
        parse_shard_index(json.dumps(document).encode(), "d/shardindex.json", confined=True)
    document = {"wids_version": 1, "base": "s3://elsewhere", "shardlist": [{"url": "a.tar", "nsamples": 1}]}
    with pytest.raises(ManifestError, match="base"):
        parse_shard_index(json.dumps(document).encode(), "d/shardindex.json", confined=True)
    named = parse_shard_index(json.dumps(document).encode(), "i.json", confined=False)  # given as the source
    assert named.resolve_url("a.tar", "s3://index-folder") == "s3://elsewhere/a.tar"
    for bad, words in ((-1, "non-negative"), (10**12, "allows"), ("3", "non-negative")):
        document = {"wids_version": 1, "shardlist": [{"url": "a.tar", "nsamples": bad}]}
        with pytest.raises(ManifestError, match=words):
            parse_shard_index(json.dumps(document).encode(), "i.json", confined=False)
    relative_escape = {"wids_version": 1, "shardlist": [{"url": "../x.tar", "nsamples": 1}]}
    with pytest.raises(ManifestError, match=r"'\.\.'"):
        parse_shard_index(json.dumps(relative_escape).encode(), "i.json", confined=False)
