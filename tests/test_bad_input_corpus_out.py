"""Bad-input corpus, OUT: ``shard`` writes only into an empty OUT or one it wrote itself, and never deletes or
overwrites a file it did not write — locally and on S3."""

from __future__ import annotations

import json
import shutil

import pytest
from builders import make_imagefolder

from meddiffuse_stream.convert import ConversionError, ConvertOptions, ImageFolderSource, convert_dataset
from meddiffuse_stream.storage import Location

pytestmark = pytest.mark.timeout(180)

FOREIGN_SHARD = b"a tar another tool wrote: not ours to delete"


def _convert(src, out_url: str, storage_options=None, shard_size: int = 4):
    return convert_dataset(
        ImageFolderSource(),
        str(src),
        out_url,
        ConvertOptions(shard_size=shard_size, splits={"train": 1.0}),
        storage_options=storage_options,
        progress=False,
    )


def _files(out: Location) -> dict[str, bytes]:
    return {path: out.read_bytes(path) for path in out.list_files()}


@pytest.fixture
def src(tmp_path):
    return make_imagefolder(tmp_path / "in", {"a": 5, "b": 5}, size=8)


def _check_refused_untouched(src, out: Location, storage_options=None) -> None:
    before = _files(out)
    with pytest.raises(ConversionError) as info:
        _convert(src, out.url, storage_options)
    message = str(info.value)
    assert "not written by meddiffuse-stream" in message and "train/train-000000.tar" in message, message
    assert "\n" not in message
    assert _files(out) == before, "a refused conversion leaves OUT exactly as it found it"


def test_a_folder_of_another_tools_shards_is_refused_and_left_untouched(src, tmp_path):
    out = tmp_path / "theirs"
    (out / "train").mkdir(parents=True)
    (out / "train" / "train-000000.tar").write_bytes(FOREIGN_SHARD)  # our name, not our file
    (out / "train" / "train-000007.tar").write_bytes(FOREIGN_SHARD)  # a name the plan would remove as an orphan
    (out / "notes.txt").write_text("theirs")
    _check_refused_untouched(src, Location(str(out)))


def test_a_foreign_shard_in_an_out_we_wrote_is_neither_overwritten_nor_removed(src, tmp_path):
    out = tmp_path / "ours"
    _convert(src, str(out), shard_size=4)  # 3 shards
    stranger = out / "train" / "train-000009.tar"  # looks like an orphan of an earlier plan: it is not ours
    stranger.write_bytes(FOREIGN_SHARD)
    summary = _convert(src, str(out), shard_size=10)  # 1 shard now: the plan's orphans are removed, ours only
    assert summary.converted == 10
    assert stranger.read_bytes() == FOREIGN_SHARD
    assert not (out / "train" / "train-000001.tar").exists(), "our own orphan is removed"
    listed = [s["path"] for s in json.loads((out / "dataset.json").read_text())["shards"]]
    assert listed == ["train/train-000000.tar"]
    (out / "train" / "train-000000.tar").unlink()
    (out / "train" / "train-000000.tar").write_bytes(FOREIGN_SHARD)  # replaced by someone else's file
    (out / "dataset.json").unlink()
    shutil.rmtree(out / ".progress")
    with pytest.raises(ConversionError, match="not written by meddiffuse-stream"):
        _convert(src, str(out), shard_size=10)
    assert (out / "train" / "train-000000.tar").read_bytes() == FOREIGN_SHARD


def test_an_out_whose_dataset_json_another_tool_wrote_is_refused(src, tmp_path):
    out = tmp_path / "other"
    (out / "train").mkdir(parents=True)
    (out / "dataset.json").write_text(json.dumps({"format_version": 1, "created_by": "some-other-tool"}))
    (out / "train" / "train-000000.tar").write_bytes(FOREIGN_SHARD)
    _check_refused_untouched(src, Location(str(out)))


def test_a_conversion_killed_before_its_first_record_is_still_ours(src, tmp_path):
    out = tmp_path / "killed"
    _convert(src, str(out))
    (out / "dataset.json").unlink()
    for record in (out / ".progress").glob("*.json"):
        record.unlink()  # killed after the shards were renamed, before any record was written: only the claim is left
    summary = _convert(src, str(out))
    assert summary.converted == 10 and summary.reused_shards == 0


@pytest.mark.s3
def test_s3_a_prefix_of_another_tools_shards_is_refused_and_left_untouched(src, s3_server, s3_bucket):
    options = s3_server.storage_options
    out = Location(f"{s3_bucket}/theirs", options)
    out.write_bytes("train/train-000000.tar", FOREIGN_SHARD)
    out.write_bytes("train/train-000007.tar", FOREIGN_SHARD)
    _check_refused_untouched(src, out, options)
    ours = Location(f"{s3_bucket}/ours", options)
    _convert(src, ours.url, options, shard_size=4)
    ours.write_bytes("train/train-000009.tar", FOREIGN_SHARD)
    _convert(src, ours.url, options, shard_size=10)
    assert ours.read_bytes("train/train-000009.tar") == FOREIGN_SHARD
    assert not ours.exists("train/train-000001.tar")
