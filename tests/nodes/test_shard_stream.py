"""Loading a shard: in memory or, past the memory limit, through a temporary file (or the local file itself) —
either way verified (sha256, sample count) before any sample is handed on, with one read of remote bytes."""

from __future__ import annotations

import hashlib
import io
import uuid

import numpy as np
import pytest
from tar_bytes import END, sample

from meddiffuse_stream.counters import Counters
from meddiffuse_stream.nodes.reading.shard_stream import fetch_shard
from meddiffuse_stream.nodes.source import DatasetSource
from meddiffuse_stream.shardfmt.manifest import ShardInfo
from meddiffuse_stream.shardfmt.tar import RawSample
from meddiffuse_stream.storage.location import Location
from meddiffuse_stream.storage.retry import RetryPolicy
from meddiffuse_stream.storage.shard_cache import ShardIntegrityError

SHARD = b"".join(sample(f"k{i}", png=bytes([i]) * 3000) for i in range(6)) + END


def _source(url: str, **info) -> DatasetSource:
    fields = {"samples": 6, "bytes": len(SHARD), "sha256": hashlib.sha256(SHARD).hexdigest(), **info}
    return DatasetSource(Location(url), "train", (ShardInfo("s.tar", **fields),))


def _where(kind: str, tmp_path) -> str:
    if kind == "local":
        (tmp_path / "s.tar").write_bytes(SHARD)
        return str(tmp_path)
    url = f"memory://shards-{uuid.uuid4().hex}"  # a filesystem that is not local disk: read as a remote one
    Location(url).write_bytes("s.tar", SHARD)
    return url


def _load(source: DatasetSource, limit: int) -> tuple[list, Counters]:
    counters = Counters()
    loaded = fetch_shard(
        source, 0, policy=RetryPolicy(), rng=np.random.default_rng(0), counters=counters, memory_limit=limit
    ).parse()
    try:
        return list(loaded.items), counters
    finally:
        loaded.close()


@pytest.mark.parametrize("kind", ["local", "remote"])
@pytest.mark.parametrize("limit", [1 << 20, 4096])  # in memory; past the limit (temporary file or the file itself)
@pytest.mark.parametrize("size_known", [True, False])
def test_loaded_whole_and_verified_in_memory_or_past_the_limit(tmp_path, kind, limit, size_known):
    source = _source(_where(kind, tmp_path), **({} if size_known else {"bytes": None}))
    items, counters = _load(source, limit)
    assert [i.key for i in items if isinstance(i, RawSample)] == [f"k{i}" for i in range(6)]
    assert items[2].members["png"] == bytes([2]) * 3000 and counters["shards_verified"] == 1


@pytest.mark.parametrize("kind", ["local", "remote"])
@pytest.mark.parametrize("limit", [1 << 20, 4096])
def test_a_wrong_sha256_or_count_is_refused_before_any_sample(tmp_path, kind, limit):
    where = _where(kind, tmp_path)
    with pytest.raises(ShardIntegrityError, match="sha256 mismatch"):
        _load(_source(where, sha256="0" * 64), limit)
    for listed in (5, 7):
        with pytest.raises(ShardIntegrityError, match=f"holds 6 samples, dataset.json lists {listed}"):
            _load(_source(where, samples=listed, sha256=None), limit)


def test_the_remote_bytes_are_read_once(tmp_path, monkeypatch):
    """Hashing works on the bytes already read: verifying costs no second download."""
    reads = []

    class Counting(io.BytesIO):
        def read(self, size=-1):
            data = super().read(size)
            reads.append(len(data))
            return data

    url = _where("remote", tmp_path)
    location = Location(url)
    original = location.fs.open
    monkeypatch.setattr(location.fs, "open", lambda path, mode="rb", **kw: Counting(original(path, mode).read()))
    _load(DatasetSource(location, "train", _source(url).shards), 1 << 20)
    assert sum(reads) == len(SHARD)
