"""In a long-running process, on a real S3 server (SeaweedFS): a new loader sees the prefix as it is now (after
``meddiffuse-stream index``, after another client added or replaced a shard), and a cached stock shard (no sha256
known) is keyed by the object's identity, so a replaced object is fetched again."""

from __future__ import annotations

import warnings

import pytest
import s3fs
from test_sources_s3 import _tiny_shard

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.cli import main
from meddiffuse_stream.shardfmt.manifest import ManifestError

pytestmark = [pytest.mark.s3, pytest.mark.timeout(300)]


def _keys(loader: MedDiffuseLoader) -> list[str]:
    return sorted(key for batch in loader for key in batch["key"])


def test_a_new_loader_sees_what_index_wrote_and_what_another_client_added(s3_server, s3_bucket, monkeypatch):
    options = s3_server.storage_options
    prefix = f"{s3_bucket}/grow"
    ours = s3fs.S3FileSystem(**options)  # the instance fsspec hands this process's loaders, listings cached
    other = s3fs.S3FileSystem(**options, skip_instance_cache=True)  # another client
    other.pipe(f"{prefix}/train-000000.tar", _tiny_shard(0))
    with pytest.warns(RuntimeWarning, match="run `meddiffuse-stream index"):
        with MedDiffuseLoader(prefix, 2, storage_options=options, as_dict=True) as loader:
            assert loader.dataset.total == 2 and loader.dataset.origin == "read to count"
    assert ours.ls(prefix)  # this process's listing of the prefix is now cached
    other.pipe(f"{prefix}/train-000001.tar", _tiny_shard(1))
    with pytest.warns(RuntimeWarning, match="read all 2 shards"):
        with MedDiffuseLoader(prefix, 2, storage_options=options, as_dict=True) as loader:
            assert loader.dataset.total == 4, "a shard another client added is listed"
            assert len(_keys(loader)) == 4
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    assert main(["index", prefix, "--quiet"] + [f"--storage-option={k}={v}" for k, v in _flat(options)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # read from the index: no shard read to count
        loader = MedDiffuseLoader(prefix, 2, storage_options=options, as_dict=True)
    with loader:
        assert loader.dataset.origin == "shard index" and len(_keys(loader)) == 4
    other.pipe(f"{prefix}/train-000002.tar", _tiny_shard(2))
    with pytest.raises(ManifestError, match=r"does not list shards the folder holds.*train-000002"):
        MedDiffuseLoader(prefix, 2, storage_options=options)


def _flat(options: dict) -> list[tuple[str, object]]:
    pairs = [(k, v) for k, v in options.items() if not isinstance(v, dict)]
    return pairs + [(k, v) for k, v in (options.get("client_kwargs") or {}).items()]


def test_a_replaced_stock_shard_is_fetched_again_not_served_from_the_cache(s3_server, s3_bucket, tmp_path):
    options = s3_server.storage_options
    prefix = f"{s3_bucket}/replace"
    other = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    other.pipe(f"{prefix}/train-000000.tar", _tiny_shard(0))
    cache = str(tmp_path / "cache")

    def read() -> tuple[list[str], dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # read to count, no index
            with MedDiffuseLoader(prefix, 2, storage_options=options, as_dict=True, cache_dir=cache) as loader:
                return _keys(loader), loader.counters.as_dict()

    first, counted = read()
    assert counted["cache_misses"] == 1
    again, counted = read()
    assert again == first and counted["cache_hits"] == 1, "an unchanged object is served from the cache"
    other.pipe(f"{prefix}/train-000000.tar", _tiny_shard(7))  # same name, same size, other samples
    replaced, counted = read()
    assert counted["cache_misses"] == 1 and replaced != first, "a replaced object is fetched again"
    assert replaced == ["s00007_0", "s00007_1"]


def test_gzip_shards_on_s3_are_listed_and_read_by_worker_processes(s3_server, s3_bucket):
    import gzip

    options = s3_server.storage_options
    prefix = f"{s3_bucket}/gz"
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    fs.pipe(f"{prefix}/train-000000.tar", _tiny_shard(0))
    fs.pipe(f"{prefix}/train-000001.tar.gz", gzip.compress(_tiny_shard(1)))
    fs.pipe(f"{prefix}/train-000002.tgz", gzip.compress(_tiny_shard(2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # read to count: no index
        loader = MedDiffuseLoader(prefix, 2, storage_options=options, as_dict=True, num_workers=1)
    with loader:
        assert _keys(loader) == [f"s{i:05d}_{j}" for i in range(3) for j in range(2)]
