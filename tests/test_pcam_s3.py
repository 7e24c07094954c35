"""PCam's HDF5 files read from a real S3 server: HDF5 jumps around in a file, so each read is a ranged GET, retried
and bounded by its total deadline like every other object read (a trickling store cannot hold the converter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import s3fs
from builders import make_pcam
from s3_proxy import fault_proxy

from meddiffuse_stream.convert import ConvertOptions, convert_dataset
from meddiffuse_stream.convert.pcam import PcamSource
from meddiffuse_stream.storage import Location, RetryPolicy, ShardReadError

pytestmark = [pytest.mark.s3, pytest.mark.timeout(180)]

X_FILE = "camelyonpatch_level_2_split_valid_x.h5"
POLICY = RetryPolicy(
    attempts=2, base=0.05, cap=0.1, deadline=60, connect_timeout=2, read_timeout=3, min_bytes_per_second=1e6
)


def _upload(tmp_path: Path, s3_server, s3_bucket: str) -> tuple[Path, str]:
    local = make_pcam(tmp_path / "pcam")
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/pcam", recursive=True)
    return local, f"{s3_bucket}/pcam"


def test_pcam_on_s3_converts_to_the_same_shards_as_from_disk(tmp_path, s3_server, s3_bucket):
    local, remote = _upload(tmp_path, s3_server, s3_bucket)
    options = ConvertOptions(shard_size=8)
    convert_dataset(PcamSource(), str(local), str(tmp_path / "from-disk"), options, progress=False)
    remote_options = s3_server.storage_options
    convert_dataset(
        PcamSource(), remote, str(tmp_path / "from-s3"), options, storage_options=remote_options, progress=False
    )
    disk, s3 = (json.loads((tmp_path / name / "dataset.json").read_text()) for name in ("from-disk", "from-s3"))
    assert [s["sha256"] for s in s3["shards"]] == [s["sha256"] for s in disk["shards"]]
    assert s3["counts"]["converted"] == 32


def test_a_seekable_object_reads_what_the_file_holds_at_every_offset(tmp_path, s3_server, s3_bucket):
    local, remote = _upload(tmp_path, s3_server, s3_bucket)
    expected = (local / X_FILE).read_bytes()
    stream = Location(remote, s3_server.storage_options).open_seekable(X_FILE)
    rng = np.random.default_rng(0)
    for _ in range(20):
        start = int(rng.integers(0, len(expected)))
        size = int(rng.integers(1, 5000))
        stream.seek(start)
        assert stream.read(size) == expected[start : start + size]
        assert stream.tell() == min(len(expected), start + size)
    stream.seek(-10, 2)
    assert stream.read() == expected[-10:]


def test_a_trickling_hdf5_file_misses_its_deadline_is_retried_and_then_named(tmp_path, s3_server, s3_bucket):
    _local, remote = _upload(tmp_path, s3_server, s3_bucket)
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        plan.only_suffix, plan.trickles, plan.trickle_seconds = ".h5", 10, 0.5
        s3fs.S3FileSystem.clear_instance_cache()
        options = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": endpoint}}
        retries: list[BaseException] = []
        location = Location(remote, options, retry=POLICY, on_retry=retries.append)
        stream = location.open_seekable(X_FILE)
        with pytest.raises(ShardReadError) as info:
            stream.read(64)
    message = str(info.value)
    assert "did not arrive within the object's deadline" in message, message
    assert f"endpoint {endpoint}" in message and "still failing after 2 attempts" in message, message
    assert len(retries) == 1 and plan.sent["trickle"] == 2, (retries, plan.sent)
