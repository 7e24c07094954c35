"""A local shard is hashed once per process while it is unchanged; any change to the file — even one that keeps
its size and modification time — makes the next load hash it again and refuse it if it no longer matches."""

from __future__ import annotations

import hashlib
import os

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

SHARD = b"".join(sample(f"k{i}", png=bytes([i]) * 3000) for i in range(4)) + END


def _load(root, memory_limit: int = 1 << 20) -> tuple[list[str], Counters]:
    info = ShardInfo("s.tar", samples=4, bytes=len(SHARD), sha256=hashlib.sha256(SHARD).hexdigest())
    source = DatasetSource(Location(str(root)), "train", (info,))
    counters = Counters()
    loaded = fetch_shard(
        source, 0, policy=RetryPolicy(), rng=np.random.default_rng(0), counters=counters, memory_limit=memory_limit
    ).parse()
    try:
        return [item.key for item in loaded.items if isinstance(item, RawSample)], counters
    finally:
        loaded.close()


@pytest.mark.parametrize("memory_limit", [1 << 20, 4096], ids=["in-memory", "past-the-limit"])
def test_an_unchanged_shard_is_hashed_once_a_changed_one_again(tmp_path, memory_limit):
    path = tmp_path / "s.tar"
    path.write_bytes(SHARD)
    keys, first = _load(tmp_path, memory_limit)
    assert keys == ["k0", "k1", "k2", "k3"] and first["shards_verified"] == 1 and first["shards_unchanged"] == 0
    keys, second = _load(tmp_path, memory_limit)
    assert keys == ["k0", "k1", "k2", "k3"] and second["shards_verified"] == 1 and second["shards_unchanged"] == 1
    stamp = os.stat(path)
    damaged = bytearray(SHARD)
    damaged[2000] ^= 0xFF  # inside k0's image: the tar stays valid, only the hash can tell
    with open(path, "r+b") as handle:  # the same file (inode) and size ...
        handle.write(damaged)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # ... and modification time put back
    with pytest.raises(ShardIntegrityError, match="sha256 mismatch"):
        _load(tmp_path, memory_limit)
    path.write_bytes(SHARD)
    keys, repaired = _load(tmp_path, memory_limit)
    assert keys == ["k0", "k1", "k2", "k3"] and repaired["shards_unchanged"] == 0  # hashed again, then trusted
    assert _load(tmp_path, memory_limit)[1]["shards_unchanged"] == 1
