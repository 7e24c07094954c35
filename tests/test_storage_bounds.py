"""Object storage as an adversary, against the real SeaweedFS server: an endpoint that accepts and never answers,
requests that hang, SlowDown on the manifest — every wait is bounded, every retry goes through RetryPolicy and is
counted (main process, read-ahead thread, worker processes), and the error names the endpoint and the setting."""

from __future__ import annotations

import pytest
import s3fs
from loader_helpers import uneven_dataset
from s3_proxy import fault_proxy, silent_endpoint

from meddiffuse_stream import MedDiffuseLoader, RetryPolicy
from meddiffuse_stream.shardfmt.manifest import ManifestError
from meddiffuse_stream.storage.location import Location
from meddiffuse_stream.storage.retry import ShardReadError

pytestmark = [pytest.mark.s3]

FAST = RetryPolicy(connect_timeout=2, read_timeout=2, deadline=6, base=0.2)


def _options(endpoint: str) -> dict:
    return {"key": "meddiffuse-test", "secret": "meddiffuse-test-secret", "client_kwargs": {"endpoint_url": endpoint}}


def _keys(loader) -> list[tuple[str, float]]:
    return [
        (key, float(image.sum())) for batch in loader for key, image in zip(batch["key"], batch["image"], strict=True)
    ]


@pytest.mark.timeout(60)
def test_a_silent_endpoint_fails_fast_with_the_endpoint_and_the_setting_named():
    with silent_endpoint() as (endpoint, accepted):
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(ShardReadError) as info:  # the test's timeout (60 s) is far above the deadline (6 s)
            MedDiffuseLoader("s3://bucket/ds", 4, storage_options=_options(endpoint), retry=FAST)
    message = str(info.value)
    assert "still failing after" in message  # given up by the policy, not cut by anything else
    assert "s3://bucket/ds/dataset.json" in message and endpoint in message
    assert "read_timeout=2" in message and "deadline=6" in message and accepted


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_with_default_settings_a_silent_endpoint_fails_within_two_minutes():
    """The issue's case: botocore's defaults once kept the constructor silent for 422 s."""
    with silent_endpoint() as (endpoint, _):
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(ShardReadError, match=endpoint) as info:  # bounded by the test's timeout (200 s)
            MedDiffuseLoader("s3://bucket/ds", 4, storage_options=_options(endpoint))
    assert "still failing after" in str(info.value)
    # what bounds the wait, as settings: the retry deadline plus the last attempt's own timeouts
    defaults = RetryPolicy()
    assert defaults.deadline + defaults.connect_timeout + defaults.read_timeout <= 120


@pytest.mark.timeout(60)
def test_location_operations_are_bounded_too(tmp_path):
    with silent_endpoint() as (endpoint, _):
        s3fs.S3FileSystem.clear_instance_cache()
        location = Location("s3://bucket/cache", _options(endpoint), retry=FAST)
        for action in (
            lambda: location.read_bytes("x.bin"),
            lambda: location.write_bytes("x.bin", b"1"),
            lambda: location.file_sizes(),
            lambda: location.exists("x.bin"),
        ):
            with pytest.raises(ShardReadError, match="still failing"):  # bounded by the test's timeout
                action()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 1])
def test_hanging_shard_requests_time_out_and_every_retry_is_counted(tmp_path, s3_server, s3_bucket, workers):
    """s3fs in the main process (workers=0), obstore in a worker process with its read-ahead thread (workers=1):
    each hung GET is cut by the read timeout, retried by RetryPolicy and counted in loader.counters."""
    local = uneven_dataset(tmp_path, samples=40, shard_size=8)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    with MedDiffuseLoader(str(local), 8, as_dict=True, seed=4, num_workers=workers) as loader:
        expected = _keys(loader)
    policy = RetryPolicy(connect_timeout=2, read_timeout=2, deadline=30, base=0.1)
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        plan.only_suffix, plan.hangs, plan.slowdowns = ".tar", 2, 2
        with MedDiffuseLoader(
            f"{s3_bucket}/ds",
            8,
            as_dict=True,
            seed=4,
            num_workers=workers,
            retry=policy,
            storage_options=_options(endpoint),
        ) as loader:
            assert _keys(loader) == expected
            counters = dict(loader.counters)
    assert plan.sent["hang"] == 2 and plan.sent["slowdown"] == 2, plan.sent
    assert counters["retries"] == 4, counters
    assert counters.get("skipped", 0) == 0 and counters["shards_verified"] == 5


@pytest.mark.timeout(120)
def test_retries_reading_the_manifest_are_counted(tmp_path, s3_server, s3_bucket):
    local = uneven_dataset(tmp_path, samples=16, shard_size=8)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        plan.only_suffix, plan.slowdowns = "dataset.json", 3
        with MedDiffuseLoader(f"{s3_bucket}/ds", 8, storage_options=_options(endpoint), retry=FAST) as loader:
            assert loader.counters["retries"] == 3  # in the constructor, before any batch
            assert len(list(loader)) == 2
    assert plan.sent["slowdown"] == 3


@pytest.mark.timeout(120)
def test_a_manifest_pointing_into_another_bucket_is_refused_before_any_read(tmp_path, s3_server, s3_bucket):
    import json

    local = uneven_dataset(tmp_path, samples=8, shard_size=8)
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    fs.put(str(local), f"{s3_bucket}/ds", recursive=True)
    fs.mkdir(f"{s3_bucket}-secret")
    fs.pipe(f"{s3_bucket}-secret/key.tar", (local / "train" / "train-000000.tar").read_bytes())
    manifest = json.loads((local / "dataset.json").read_text())
    manifest["shards"][0]["path"] = f"/{s3_bucket.removeprefix('s3://')}-secret/key.tar"
    fs.pipe(f"{s3_bucket}/ds/dataset.json", json.dumps(manifest).encode())
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(ManifestError, match=r"shards\[0\].path.*absolute"):
            MedDiffuseLoader(f"{s3_bucket}/ds", 4, storage_options=_options(endpoint))
    assert not any("secret" in path for _, path, _ in plan.log), plan.log
