"""Bad-input corpus, what a loader is pointed at: special files are refused from ``stat`` before any open (a FIFO
would block the constructor forever), shards resolve only inside the dataset's root (symlinks resolved and checked;
a remote shard index names only its own bucket), and no message echoes a foreign file's bytes."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from pathlib import Path

import pytest
from test_bad_input_corpus import _dataset, _good, _tar

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.nodes import LoaderDataError
from meddiffuse_stream.shardfmt.manifest import ManifestError

pytestmark = pytest.mark.timeout(60)


def _refused(source, words: str, fifos: tuple[Path, ...] = ()) -> str:
    """The loader's constructor raises naming ``words`` — within 10 s: one that blocks opening a FIFO is released
    (a writer opens and closes the FIFO) and fails the test."""
    outcome: dict[str, BaseException | None] = {}

    def construct() -> None:
        try:
            MedDiffuseLoader(source, 4).close()
            outcome["error"] = None
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=construct, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        for fifo in fifos:  # release the blocked open so the thread ends
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"the loader's constructor blocked on {source!r} (it opened a FIFO)")
    error = outcome["error"]
    assert isinstance(error, (ValueError, OSError)), repr(error)
    message = str(error)
    assert words in message and "\n" not in message, message
    return message


@pytest.fixture
def shards(tmp_path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "real-000000.tar").write_bytes(_tar(_good("a", 3)))
    os.mkfifo(folder / "fifo-000000.tar")
    return folder


def test_a_fifo_named_as_the_source_is_refused_without_opening_it(shards):
    _refused(str(shards / "fifo-000000.tar"), "FIFO", (shards / "fifo-000000.tar",))


@pytest.mark.parametrize("form", ["brace", "list"])
def test_a_fifo_named_in_a_brace_pattern_or_a_list_is_refused(shards, form):
    source = {
        "brace": str(shards / "{real,fifo}-000000.tar"),
        "list": [str(shards / "real-000000.tar"), str(shards / "fifo-000000.tar")],
    }[form]
    _refused(source, "FIFO", (shards / "fifo-000000.tar",))


@pytest.mark.parametrize("form", ["glob", "folder"])
def test_a_fifo_a_glob_or_a_folder_listing_finds_is_named_and_never_opened(shards, form):
    source = str(shards / "*.tar") if form == "glob" else str(shards)
    outcome: dict[str, object] = {}

    def construct() -> None:
        with warnings.catch_warnings(record=True) as heard:
            warnings.simplefilter("always")
            with MedDiffuseLoader(source, 4, as_dict=True) as loader:
                outcome["keys"] = sorted(k for batch in loader for k in batch["key"])
        outcome["warnings"] = [str(w.message) for w in heard]

    thread = threading.Thread(target=construct, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.open(shards / "fifo-000000.tar", os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("the loader blocked opening the FIFO a listing found")
    assert outcome["keys"] == ["a000", "a001", "a002"]
    named = [w for w in outcome["warnings"] if "fifo-000000.tar" in w]  # type: ignore[union-attr]
    assert named and "not a regular file" in named[0], outcome["warnings"]


def test_a_fifo_as_dataset_json_as_a_listed_shard_or_as_an_index_is_refused(tmp_path):
    root = _dataset(tmp_path / "ds", [(_tar(_good("a", 3)), 3)])
    shard = root / "train" / "train-000000.tar"
    shard.unlink()
    os.mkfifo(shard)
    _refused(str(root), "FIFO", (shard,))
    (root / "dataset.json").unlink()
    os.mkfifo(root / "dataset.json")
    _refused(str(root), "FIFO", (root / "dataset.json",))
    os.mkfifo(tmp_path / "index.json")
    _refused(str(tmp_path / "index.json"), "FIFO", (tmp_path / "index.json",))


def test_a_listed_shard_that_is_a_link_out_of_the_root_is_refused_before_it_is_read(tmp_path):
    outside = tmp_path / "elsewhere.tar"
    outside.write_bytes(_tar(_good("s", 3)))  # a valid shard: before, its samples were delivered
    root = _dataset(tmp_path / "ds", [(_tar(_good("a", 3)), 3)])
    shard = root / "train" / "train-000000.tar"
    shard.unlink()
    shard.symlink_to(outside)
    message = _refused(str(root), "outside the dataset")
    assert "train/train-000000.tar" in message
    (root / "train" / "other.tar").write_bytes(_tar(_good("a", 3)))
    shard.unlink()
    shard.symlink_to(root / "train" / "other.tar")  # a link that stays inside the root is followed
    with MedDiffuseLoader(str(root), 4, as_dict=True) as loader:
        assert sorted(k for batch in loader for k in batch["key"]) == ["a000", "a001", "a002"]


def test_a_folder_link_out_of_the_root_is_refused_too(tmp_path):
    outside = tmp_path / "elsewhere" / "train"
    outside.mkdir(parents=True)
    (outside / "train-000000.tar").write_bytes(_tar(_good("s", 3)))
    root = _dataset(tmp_path / "ds", [(_tar(_good("a", 3)), 3)])
    (root / "train" / "train-000000.tar").unlink()
    (root / "train").rmdir()
    (root / "train").symlink_to(outside, target_is_directory=True)
    _refused(str(root), "outside the dataset")


def test_messages_never_echo_the_bytes_of_a_file_that_is_not_a_shard(tmp_path):
    secret = (
        b"SECRET-TOKEN-0123456789abcdef:" * 40
    )  # 1200 bytes: one sample fits  # what a shard path might reach: a key file, a password list
    root = _dataset(tmp_path, [(secret, 1), (_tar(_good("c", 7)), 7)])
    with MedDiffuseLoader(str(root), 4) as loader, pytest.raises(LoaderDataError) as info:
        list(loader)
    message = str(info.value)
    assert "train-000000" in message and "tar" in message, message
    for piece in (b"SECRET", b"TOKEN", b"0123", b"abcdef", b"CRET-TO"):
        assert piece.decode() not in message, message


@pytest.mark.s3
def test_s3_an_index_cannot_name_another_bucket_a_local_file_or_a_file_url(tmp_path, s3_server, s3_bucket):
    import s3fs
    from s3_proxy import fault_proxy

    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    shard = _tar(_good("a", 3))
    other = f"{s3_bucket}-secret"
    fs.mkdir(other)
    fs.pipe(f"{other}/x.tar", shard)
    fs.pipe(f"{s3_bucket}/ds/x.tar", shard)
    (tmp_path / "local.tar").write_bytes(shard)
    entry = {"nsamples": 3, "filesize": len(shard)}
    bad = {
        "another bucket": {"shardlist": [{"url": f"{other}/x.tar", **entry}]},
        "a base in another bucket": {"base": other, "shardlist": [{"url": "x.tar", **entry}]},
        "a local path": {"shardlist": [{"url": str(tmp_path / "local.tar"), **entry}]},
        "a file url": {"shardlist": [{"url": f"file://{tmp_path}/local.tar", **entry}]},
        "a file url as base": {"base": f"file://{tmp_path}", "shardlist": [{"url": "local.tar", **entry}]},
    }
    endpoint_options = dict(s3_server.storage_options)
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        options = {**endpoint_options, "client_kwargs": {"endpoint_url": endpoint}}
        for name, document in bad.items():
            fs.pipe(
                f"{s3_bucket}/ds/{name.replace(' ', '_')}.json", json.dumps({"wids_version": 1, **document}).encode()
            )
            with pytest.raises(ManifestError, match="only shards in its own bucket") as info:
                MedDiffuseLoader(f"{s3_bucket}/ds/{name.replace(' ', '_')}.json", 4, storage_options=options)
            assert "\n" not in str(info.value), name
        fs.pipe(
            f"{s3_bucket}/ds/good.json",
            json.dumps({"wids_version": 1, "shardlist": [{"url": "x.tar", **entry}]}).encode(),
        )
        with MedDiffuseLoader(f"{s3_bucket}/ds/good.json", 4, storage_options=options) as loader:
            assert len(list(loader)) == 1  # an index beside its shards still works
    assert not any("secret" in path for _, path, _ in plan.log), plan.log
