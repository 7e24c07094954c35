"""The loader against the real S3 server: same batches as from disk; transient errors retried and resumed."""

import errno
import subprocess
import sys

import numpy as np
import pytest
from loader_helpers import uneven_dataset

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.storage.retry import ResumableReader, RetryPolicy, ShardReadError, is_transient


def _keys(loader):
    return [(list(b["key"]), b["image"].sum().item()) for b in loader]


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.parametrize(("workers", "reader"), [(0, "auto"), (2, "auto"), (2, "fsspec")])
def test_same_epoch_from_s3_and_from_disk(tmp_path, s3_server, s3_bucket, workers, reader, monkeypatch):
    """Worker processes read shards through obstore (unless MEDDIFFUSE_S3_READER=fsspec), the main process and
    thread workers through s3fs: the batches are the same either way."""
    import s3fs

    monkeypatch.setenv("MEDDIFFUSE_S3_READER", reader)
    local = uneven_dataset(tmp_path, samples=57, shard_size=9)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    options = dict(num_workers=workers, as_dict=True, seed=2)
    with MedDiffuseLoader(str(local), 8, **options) as from_disk:
        expected = _keys(from_disk)
        assert "shards_via_obstore" not in from_disk.counters
    with MedDiffuseLoader(f"{s3_bucket}/ds", 8, storage_options=s3_server.storage_options, **options) as remote:
        assert _keys(remote) == expected
        via_obstore = remote.counters.get("shards_via_obstore", 0)
    if workers and reader == "auto":
        assert via_obstore >= 7, "worker processes read through obstore (has this test process imported it?)"
    else:
        assert via_obstore == 0
    cache = str(tmp_path / "cache")
    with MedDiffuseLoader(
        f"{s3_bucket}/ds", 8, storage_options=s3_server.storage_options, cache_dir=cache, **options
    ) as cached:
        assert _keys(cached) == expected
        misses = cached.counters["cache_misses"]
        assert 7 <= misses <= 7 + 2 * workers  # a shard two workers share may be fetched by both at once
        assert _keys(cached) != expected  # the next epoch, from the cache, in another order
        assert cached.counters["cache_misses"] == misses and cached.counters["cache_hits"] >= 7


@pytest.mark.s3
@pytest.mark.slow
def test_credentials_from_the_environment_and_wrong_ones_fail_fast(tmp_path, s3_server, s3_bucket, monkeypatch):
    import s3fs

    local = uneven_dataset(tmp_path, samples=12, shard_size=6)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    with MedDiffuseLoader(f"{s3_bucket}/ds", 4) as loader:
        assert len(list(loader)) == 3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(PermissionError) as info:
        MedDiffuseLoader(f"{s3_bucket}/ds", 4, retry=RetryPolicy(deadline=600))  # a retried 403 would hang
    assert "wrong-secret" not in str(info.value)


class _Flaky:
    """A stream that breaks with ECONNRESET at every ``every`` bytes, like a connection dropped mid-shard."""

    def __init__(self, data: bytes, offset: int, every: int, failures: list[int]) -> None:
        self.data, self.position, self.every, self.failures = data, offset, every, failures

    def read(self, size: int = -1) -> bytes:
        if (
            self.position % self.every == 0
            and 0 < self.position < len(self.data)
            and self.position not in self.failures
        ):
            self.failures.append(self.position)
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        size = len(self.data) if size < 0 else size
        size = min(size, self.every - self.position % self.every)
        chunk = self.data[self.position : self.position + size]
        self.position += len(chunk)
        return chunk

    def close(self) -> None:
        return None


def test_resumable_reader_reopens_where_the_stream_broke():
    data = np.random.default_rng(0).bytes(10_000)
    failures: list[int] = []
    retries: list[BaseException] = []
    reader = ResumableReader(
        lambda offset: _Flaky(data, offset, 1000, failures),
        what="shard x",
        policy=RetryPolicy(base=0.0),
        rng=np.random.default_rng(1),
        on_retry=retries.append,
    )
    received = b"".join(iter(lambda: reader.read(300), b""))
    assert received == data and len(retries) == 9


def test_retry_budget_names_the_shard_and_permanent_errors_are_not_retried():
    calls = []

    def refused():
        calls.append(1)
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    with pytest.raises(ShardReadError, match="shard-7: still failing after 3 attempts"):
        RetryPolicy(attempts=3, base=0.0).call(refused, what="shard-7", rng=np.random.default_rng(0))
    assert len(calls) == 3
    assert not is_transient(PermissionError("Access Denied"))
    assert not is_transient(OSError("An error occurred (InvalidAccessKeyId) when calling GetObject"))
    assert is_transient(OSError("An error occurred (SlowDown) when calling GetObject: Please reduce your rate"))
    assert is_transient(OSError("An error occurred (503) when calling GetObject: Service Unavailable"))


def test_a_duration_in_a_message_is_not_an_http_status():
    """A request's duration ("in 403.357µs") once read as HTTP 403 and failed an outage at once, now and then."""
    refused = "Error performing GET http://127.0.0.1:9/b/train-000001.tar in 403.357µs - error sending request"
    assert is_transient(ConnectionError(refused))
    assert not is_transient(OSError("took 503.2 ms, then: no such key"))
    assert not is_transient(OSError("Server returned 403 Forbidden")) and is_transient(OSError("returned 503."))


def test_backoff_grows_and_is_capped_with_seeded_jitter():
    policy = RetryPolicy(base=0.5, cap=10.0, jitter=0.25)
    delays = [policy.delay(a, np.random.default_rng(3)) for a in range(10)]
    assert delays == [policy.delay(a, np.random.default_rng(3)) for a in range(10)]
    assert 0.375 <= delays[0] <= 0.625 and all(d <= 12.5 for d in delays) and delays[5] >= 7.5
    assert sum(policy.delay(a, np.random.default_rng(a)) for a in range(policy.attempts - 1)) > 45


def test_a_dead_decode_worker_is_a_clear_error_not_a_hang(tmp_path):
    local = uneven_dataset(tmp_path, samples=1000, shard_size=50)
    script = f"""
import os, signal
from meddiffuse_stream import MedDiffuseLoader
loader = MedDiffuseLoader({str(local)!r}, 4, num_workers=2, prefetch=1)
for index, _ in enumerate(loader):
    if index == 2:
        os.kill(loader.graph.workers.pool.pids[1], signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "decode worker 1" in result.stderr and "died with exit code -9" in result.stderr
