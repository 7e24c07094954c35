"""WebDataset shards on object storage (the real SeaweedFS server): a 1,000-shard prefix opened from its index
without reading a shard, a wids index given as the source, and a prefix without an index read whole with a warning
that says how much it read. Requests are counted at a proxy in front of the server."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import pytest
import s3fs
from s3_proxy import fault_proxy

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.cli import main

pytestmark = [pytest.mark.s3, pytest.mark.timeout(300)]


def _options(endpoint: str) -> dict:
    return {"key": "meddiffuse-test", "secret": "meddiffuse-test-secret", "client_kwargs": {"endpoint_url": endpoint}}


def _tiny_shard(index: int, samples: int = 2) -> bytes:
    """A stock-style shard (tarfile, PAX format, as webdataset writes) with ``samples`` samples."""
    from PIL import Image

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for sample in range(samples):
            image = io.BytesIO()
            Image.new("L", (4, 4), (index * 7 + sample) % 256).save(image, format="PNG")
            for suffix, data in (("png", image.getvalue()), ("cls", str(sample % 2).encode())):
                info = tarfile.TarInfo(f"s{index:05d}_{sample}.{suffix}")
                info.size, info.mtime = len(data), 1700000000.5
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _upload(fs: s3fs.S3FileSystem, prefix: str, shards: int, tmp_path) -> None:
    folder = tmp_path / "upload"
    folder.mkdir()
    for index in range(shards):
        (folder / f"train-{index:06d}.tar").write_bytes(_tiny_shard(index))
    fs.put(str(folder) + "/", prefix + "/", recursive=True)


def _shard_gets(plan) -> list[str]:
    return [path for method, path, query in plan.log if method == "GET" and path.endswith(".tar")]


def test_a_thousand_shard_prefix_opens_from_its_index_without_reading_a_shard(tmp_path, s3_server, s3_bucket):
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    prefix = f"{s3_bucket}/big"
    _upload(fs, prefix, 1000, tmp_path)
    environment = {"AWS_ACCESS_KEY_ID": "meddiffuse-test", "AWS_SECRET_ACCESS_KEY": "meddiffuse-test-secret"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**environment, "AWS_ENDPOINT_URL": s3_server.endpoint}.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # a cached client may hold another test's environment credentials
        assert main(["index", prefix, "--quiet", "--workers", "8"]) == 0
    index = json.loads(fs.cat(f"{prefix}/shardindex.json"))
    assert len(index["shardlist"]) == 1000 and sum(s["nsamples"] for s in index["shardlist"]) == 2000
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no "read all shards" warning
            loader = MedDiffuseLoader(prefix, 16, storage_options=_options(endpoint), as_dict=True, shuffle=False)
        built = list(plan.log)
        assert loader.dataset.origin == "shard index" and loader.dataset.total == 2000 and len(loader) == 125
        assert not _shard_gets(plan), "no shard was read to build the loader"
        assert len(built) <= 6, built  # dataset.json (absent), the listing (two pages), the index
        first = next(iter(loader))
        assert len(first["key"]) == 16 and len(_shard_gets(plan)) <= 9  # its 8 shards and one read ahead
        loader.close()
        plan.log.clear()
        with MedDiffuseLoader(f"{prefix}/shardindex.json", 16, storage_options=_options(endpoint)) as named:
            requests = [entry for entry in plan.log if not entry[1].endswith(".tar")]  # (the closed loader's
            index = f"/{prefix[5:]}/shardindex.json"  # read fresh: its size asked (no listing kept), then it
            assert named.dataset.total == 2000 and requests == [("HEAD", index, ""), ("GET", index, "")]
            # read-ahead thread may still finish a shard GET: none is this loader's)


def test_without_an_index_remote_shards_are_read_whole_with_a_warning_saying_how_much(tmp_path, s3_server, s3_bucket):
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    prefix = f"{s3_bucket}/small"
    _upload(fs, prefix, 5, tmp_path)
    total = sum(len(_tiny_shard(i)) for i in range(5))
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        said = rf"read all 5 shards \({total:,} bytes\).*meddiffuse-stream index"
        with pytest.warns(RuntimeWarning, match=said) as caught:
            loader = MedDiffuseLoader(prefix, 4, storage_options=_options(endpoint), as_dict=True)
        assert loader.dataset.origin == "read to count" and loader.dataset.total == 10
        assert len(_shard_gets(plan)) == 5 and f"{prefix}" in str(caught[0].message)
        keys = {k for batch in loader for k in batch["key"]}
        loader.close()
    assert len(keys) == 10 and total > 0
    with MedDiffuseLoader(
        f"{prefix}/train-{{000000..000004}}.tar", 4, storage_options=s3_server.storage_options, as_dict=True
    ) as pattern:
        assert {k for batch in pattern for k in batch["key"]} == keys


def test_an_index_written_elsewhere_serves_a_read_only_bucket(tmp_path, s3_server, s3_bucket):
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    prefix = f"{s3_bucket}/readonly"
    _upload(fs, prefix, 4, tmp_path)
    out = tmp_path / "index.json"
    with pytest.MonkeyPatch.context() as patch:  # the reader identity cannot write to the bucket
        reader = {"AWS_ACCESS_KEY_ID": "meddiffuse-reader", "AWS_SECRET_ACCESS_KEY": "meddiffuse-reader-secret"}
        for name, value in {**reader, "AWS_ENDPOINT_URL": s3_server.endpoint}.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        assert main(["index", prefix, "--out", str(out), "--quiet"]) == 0
        assert main(["index", prefix, "--quiet"]) == 1  # writing beside the shards is refused: a clear error
    s3fs.S3FileSystem.clear_instance_cache()  # the reader's environment credentials must not outlive the block
    document = json.loads(out.read_text())
    assert document["shardlist"][0]["url"] == f"{prefix}/train-000000.tar"
    with MedDiffuseLoader(str(out), 4, storage_options=s3_server.read_only_storage_options) as loader:
        assert loader.dataset.origin == "shard index" and sum(len(images) for images, _ in loader) == 8
