"""Shards written to and read from a real S3 server (SeaweedFS on 127.0.0.1), credentials from the environment."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import make_breakhis
from readback import load_dataset

pytestmark = [pytest.mark.s3, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_breakhis_to_s3_with_two_workers_matches_local_bytes(tmp_path, s3_server, s3_bucket):
    import s3fs

    src = make_breakhis(tmp_path / "in", patients=6)
    args = ["tools/shard.py", "breakhis", str(src), "--workers", "2", "--shard-size", "5", "--quiet"]
    env = {**os.environ, **s3_server.env}
    remote = f"{s3_bucket}/breakhis"
    result = subprocess.run(
        [sys.executable, args[0], *args[1:3], remote, *args[3:]],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr
    local = tmp_path / "local"
    subprocess.run([sys.executable, args[0], *args[1:3], str(local), *args[3:]], check=True, cwd=REPO)
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    info = json.loads(fs.cat(f"{remote}/dataset.json"))
    assert info == json.loads((local / "dataset.json").read_text())
    for shard in info["shards"]:
        data = fs.cat(f"{remote}/{shard['path']}")
        assert (
            hashlib.sha256(data).hexdigest()
            == shard["sha256"]
            == hashlib.sha256((local / shard["path"]).read_bytes()).hexdigest()
        )


def test_source_on_s3_converts_like_a_local_source(tmp_path, s3_server, s3_bucket):
    import s3fs

    from meddiffuse_stream import ConvertOptions, convert_dataset
    from meddiffuse_stream.convert import BreakHisSource

    src = make_breakhis(tmp_path / "in", patients=4)
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    fs.put(str(src), f"{s3_bucket}/BreaKHis_v1", recursive=True)
    options = ConvertOptions(shard_size=6)
    convert_dataset(
        BreakHisSource(),
        f"{s3_bucket}/BreaKHis_v1",
        str(tmp_path / "a"),
        options,
        storage_options=s3_server.storage_options,
        progress=False,
    )
    convert_dataset(BreakHisSource(), str(src), str(tmp_path / "b"), options, progress=False)
    from_s3, from_disk = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert from_s3["info"]["shards"] == from_disk["info"]["shards"]


def test_a_conversion_into_a_bucket_not_made_yet_makes_it(tmp_path, s3_server):
    """The README's quickstart writes to a new bucket: OUT's bucket missing is an empty OUT, made by the writer."""
    import uuid

    import s3fs

    bucket = f"new{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    assert not fs.exists(bucket)
    result = subprocess.run(
        [sys.executable, "-m", "meddiffuse_stream.cli", "demo-data", f"s3://{bucket}/demo", *("--n", "40", "--quiet")],
        env={**os.environ, **s3_server.env},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    fs.invalidate_cache()
    assert json.loads(fs.cat(f"{bucket}/demo/dataset.json"))["splits"]
