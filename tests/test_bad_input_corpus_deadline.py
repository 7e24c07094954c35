"""Bad-input corpus, object storage that trickles: a body sent one byte every half second is never idle long enough
for the read timeout, so before, a read waited as long as the body took (hours, for a shard). Every object read now
has a total deadline (connect + read timeout + its size at ``min_bytes_per_second``): a missed deadline is counted
as a retry, and after the policy's attempts it is an error naming the endpoint and the setting. Asserted on the
errors and counters, never on elapsed time."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import s3fs
from obstore_deadline_checks import trickled_body_misses_its_deadline
from s3_proxy import fault_proxy

from meddiffuse_stream.storage import Location, RetryPolicy, ShardReadError
from meddiffuse_stream.storage.object_stream import open_object

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]

# the deadline (2 + 3 s + a few bytes at 1 MB/s) is far below what a 64-byte body at 2 bytes a second takes (32 s)
POLICY = RetryPolicy(
    attempts=2, base=0.05, cap=0.1, deadline=60, connect_timeout=2, read_timeout=3, min_bytes_per_second=1e6
)
SIZE = 64


@pytest.fixture
def trickling(s3_server, s3_bucket):
    """``(proxy endpoint, plan, object path, storage options)``: every object GET through the proxy trickles."""
    path = f"{s3_bucket.removeprefix('s3://')}/slow/shard-000000.tar"
    s3fs.S3FileSystem(**s3_server.storage_options).pipe(path, np.random.default_rng(0).bytes(SIZE))
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        plan.only_suffix, plan.trickles, plan.trickle_seconds = ".tar", 10, 0.5
        s3fs.S3FileSystem.clear_instance_cache()
        options = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": endpoint}}
        yield endpoint, plan, path, options


def _check(message: str, endpoint: str) -> None:
    assert "did not arrive within the object's deadline" in message, message
    assert f"endpoint {endpoint}" in message and "min_bytes_per_second=1e+06" in message, message
    assert "still failing after 2 attempts" in message, message


def test_s3fs_a_trickling_shard_misses_its_deadline_is_retried_and_then_named(trickling, s3_bucket):
    endpoint, plan, _path, options = trickling
    location = Location(f"{s3_bucket}/slow", options, retry=POLICY)
    retries: list[BaseException] = []
    stream = open_object(
        location, "shard-000000.tar", size=SIZE, policy=POLICY, rng=np.random.default_rng(0), on_retry=retries.append
    )
    with pytest.raises(ShardReadError) as info:
        stream.read()
    _check(str(info.value), endpoint)
    assert len(retries) == 1 and plan.sent["trickle"] == 2, (retries, plan.sent)


def test_s3fs_a_trickling_manifest_or_input_file_misses_its_deadline_too(trickling, s3_bucket):
    endpoint, plan, _path, options = trickling
    retries: list[BaseException] = []
    location = Location(f"{s3_bucket}/slow", options, retry=POLICY, on_retry=retries.append)
    with pytest.raises(ShardReadError) as info:
        location.read_bytes("shard-000000.tar")
    _check(str(info.value), endpoint)
    assert len(retries) == 1 and plan.sent["trickle"] == 2


def test_obstore_a_trickling_shard_misses_its_deadline_is_retried_and_then_named(trickling):
    endpoint, plan, path, options = trickling
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        first, final, retries = pool.apply(
            trickled_body_misses_its_deadline, (endpoint, path, SIZE, options["key"], options["secret"], POLICY)
        )
    assert first == "ObjectDeadlineError"
    _check(final, endpoint)
    assert retries == 1 and plan.sent["trickle"] == 3  # one read alone, then two attempts through the policy


def _keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


@pytest.mark.parametrize("workers", [0, 2])  # s3fs in this process; obstore in worker processes
def test_the_loader_retries_a_trickling_shard_once_and_names_one_that_keeps_trickling(
    tmp_path, s3_server, s3_bucket, workers
):
    from loader_helpers import uneven_dataset

    from meddiffuse_stream import MedDiffuseLoader
    from meddiffuse_stream.nodes import LoaderDataError

    local = uneven_dataset(tmp_path, samples=16, shard_size=8)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    with MedDiffuseLoader(str(local), 8, as_dict=True, seed=4, num_workers=workers) as loader:
        expected = _keys(loader)
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        options = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": endpoint}}
        plan.only_suffix, plan.trickles, plan.trickle_seconds = ".tar", 1, 0.5
        settings = {"as_dict": True, "seed": 4, "num_workers": workers, "retry": POLICY, "storage_options": options}
        with MedDiffuseLoader(f"{s3_bucket}/ds", 8, **settings) as loader:
            assert _keys(loader) == expected, "one missed deadline: retried, nothing lost"
            assert loader.counters["retries"] == 1 and plan.sent["trickle"] == 1, (loader.counters, plan.sent)
        plan.trickles = 100  # every GET of a shard from now on
        with MedDiffuseLoader(f"{s3_bucket}/ds", 8, **settings) as loader, pytest.raises(LoaderDataError) as info:
            list(loader)
    _check(str(info.value), endpoint)


def test_counting_shards_without_an_index_and_hashing_them_are_deadlined_too(trickling, s3_bucket):
    from meddiffuse_stream import MedDiffuseLoader
    from meddiffuse_stream.storage import sha256_of

    endpoint, plan, _path, options = trickling
    with pytest.raises(ShardReadError) as info:  # the constructor reads a shard to count it: no index lists it
        MedDiffuseLoader(f"{s3_bucket}/slow/shard-*.tar", 4, storage_options=options, retry=POLICY)
    _check(str(info.value), endpoint)
    retries: list[BaseException] = []
    location = Location(f"{s3_bucket}/slow", options, retry=POLICY, on_retry=retries.append)
    with pytest.raises(ShardReadError) as info:  # a resumed conversion checks its shards' sha256
        sha256_of(location, "shard-000000.tar")
    _check(str(info.value), endpoint)
    assert len(retries) == 1 and plan.sent["trickle"] == 4
