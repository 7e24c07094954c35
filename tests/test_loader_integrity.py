"""A shard is checked before any of its samples is yielded: a sha256 mismatch raises before the first of them
(on_error="raise") or skips and counts the whole shard ("skip") — from local disk, the cache, S3, in worker
processes — and hostile shard content (a looping PAX record, JSON nested 100,000 deep) is a named, countable
error, never a hang or a crash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from tar_bytes import END, member, pax

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.nodes import LoaderDataError
from meddiffuse_stream.shardfmt import encode_png

pytestmark = pytest.mark.timeout(120)

PNG = encode_png(np.full((6, 6), 90, np.uint8))


def _sample(key: str, json_member: bytes = b"{}") -> bytes:
    return member(f"{key}.png", PNG) + member(f"{key}.cls", b"1") + member(f"{key}.json", json_member)


def _write(root: Path, shards: list[bytes], counts: list[int], tamper: int | None = None) -> Path:
    """A dataset of the given shard bytes; shard ``tamper`` gets a byte changed after its sha256 was recorded."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (data, count) in enumerate(zip(shards, counts, strict=True)):
        path = f"train/train-{index:06d}.tar"
        entries.append(
            {
                "path": path,
                "split": "train",
                "samples": count,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        if index == tamper:
            where = 512 + len(PNG) + 3  # in the first member's padding: still a valid tar, another sha256
            assert len(PNG) % 512 < 509
            data = data[:where] + b"\x01" + data[where + 1 :]
        (root / path).write_bytes(data)
    (root / "dataset.json").write_text(json.dumps({"format_version": 1, "class_names": ["a", "b"], "shards": entries}))
    return root


def _shards(prefixes: str, per_shard: int = 8) -> list[bytes]:
    return [b"".join(_sample(f"{p}{i:03d}") for i in range(per_shard)) + END for p in prefixes]


@pytest.mark.parametrize("workers", [0, 2])
def test_raise_comes_before_any_sample_of_a_shard_whose_sha256_does_not_match(tmp_path, workers):
    root = _write(tmp_path, _shards("abc"), [8, 8, 8], tamper=1)
    yielded: list[str] = []
    with MedDiffuseLoader(str(root), 4, shuffle=False, num_workers=workers, as_dict=True) as loader:
        with pytest.raises(LoaderDataError, match=r"train-000001\.tar: sha256 mismatch") as info:
            for batch in loader:
                yielded += batch["key"]
    assert yielded and not [k for k in yielded if k.startswith("b")], yielded
    assert "on_error='skip'" in str(info.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_skips_the_whole_unverified_shard_and_counts_it(tmp_path, workers):
    root = _write(tmp_path, _shards("abc"), [8, 8, 8], tamper=1)
    with MedDiffuseLoader(str(root), 4, shuffle=False, num_workers=workers, as_dict=True, on_error="skip") as loader:
        keys = [k for batch in loader for k in batch["key"]]
        counters = dict(loader.counters)
    assert len(keys) == 24 and not [k for k in keys if k.startswith("b")]
    assert set(keys) == {f"{p}{i:03d}" for p in "ac" for i in range(8)}  # the padding repeats good samples
    assert counters["integrity_errors"] == 1 and counters["skipped:integrity error"] == 8
    assert counters["yielded"] + counters["skipped"] == 24 and counters["shards_verified"] == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_a_pax_record_of_length_zero_is_a_named_error_and_a_counted_skip(tmp_path, workers):
    """ "0 a=b" once made the reader loop forever, with raise, with skip, and in worker processes."""
    bad = _sample("b000") + pax(b"0 a=b\n") + _sample("b001") + END
    root = _write(tmp_path, [_shards("a")[0], bad, _shards("c")[0]], [8, 1, 8])
    with MedDiffuseLoader(str(root), 4, shuffle=False, num_workers=workers) as loader:
        with pytest.raises(LoaderDataError, match=r"train-000001\.tar: corrupt PAX header"):
            list(loader)
    with MedDiffuseLoader(str(root), 4, shuffle=False, num_workers=workers, on_error="skip", as_dict=True) as loader:
        keys = {k for batch in loader for k in batch["key"]}
        counters = dict(loader.counters)
    # the first sample before the bad record may have lost members to it: it is skipped with the rest
    assert keys == {f"{p}{i:03d}" for p in "ac" for i in range(8)}
    assert counters["skipped:truncated or corrupt tar"] == 1 and counters["yielded"] == 16


@pytest.mark.parametrize("workers", [0, 2])
def test_json_nested_a_hundred_thousand_deep_is_a_named_countable_error(tmp_path, workers):
    """200 KB of [[[[… once escaped on_error="skip" as a RecursionError and killed train (which reads metadata)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    shards = [b"".join(_sample(f"a{i:03d}", deep if i == 3 else b"{}") for i in range(8)) + END]
    root = _write(tmp_path, shards, [8])
    with MedDiffuseLoader(str(root), 4, shuffle=False, num_workers=workers, as_dict=True) as loader:
        with pytest.raises(LoaderDataError, match=r"train-000000\.tar: a003\.json: nested 100000 levels deep"):
            list(loader)
    with MedDiffuseLoader(str(root), 4, shuffle=False, num_workers=workers, as_dict=True, on_error="skip") as loader:
        batches = list(loader)
        counters = dict(loader.counters)
    assert len(batches) == 2 and counters["skipped:json too deep"] == 1 and counters["yielded"] == 7


@pytest.mark.s3
@pytest.mark.parametrize("workers", [0, 2])
def test_from_s3_too_the_bad_shard_is_never_yielded(tmp_path, s3_server, s3_bucket, workers):
    import s3fs

    root = _write(tmp_path / "ds", _shards("abc"), [8, 8, 8], tamper=1)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(root), f"{s3_bucket}/ds", recursive=True)
    options = dict(shuffle=False, num_workers=workers, as_dict=True, storage_options=s3_server.storage_options)
    yielded: list[str] = []
    with MedDiffuseLoader(f"{s3_bucket}/ds", 4, **options) as loader:
        with pytest.raises(LoaderDataError, match="sha256 mismatch"):
            for batch in loader:
                yielded += batch["key"]
    assert not [k for k in yielded if k.startswith("b")]
    with MedDiffuseLoader(f"{s3_bucket}/ds", 4, on_error="skip", **options) as loader:
        keys = [k for batch in loader for k in batch["key"]]
        assert loader.counters["integrity_errors"] == 1 and loader.counters["skipped:integrity error"] == 8
    assert len(keys) == 24 and not [k for k in keys if k.startswith("b")]


def test_a_truncated_shard_without_sha256_yields_what_precedes_the_cut(tmp_path):
    """Without a recorded sha256 nothing says the shard changed: samples before a cut are used, the rest skipped."""
    data = _shards("a")[0]
    root = tmp_path / "t"
    (root / "train").mkdir(parents=True)
    (root / "train" / "train-000000.tar").write_bytes(data[: len(_sample("x")) * 5 + 600])  # inside a005.png
    (root / "dataset.json").write_text(
        json.dumps(
            {"format_version": 1, "shards": [{"path": "train/train-000000.tar", "split": "train", "samples": 8}]}
        )
    )
    with MedDiffuseLoader(str(root), 4, shuffle=False, on_error="skip", as_dict=True) as loader:
        keys = [k for batch in loader for k in batch["key"]]
        assert loader.counters["skipped:truncated or corrupt tar"] == 3 and loader.counters["yielded"] == 5
    assert set(keys) == {f"a{i:03d}" for i in range(5)}
