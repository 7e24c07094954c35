"""Storage faults against the real SeaweedFS server: a one-minute outage mid-epoch, 503 SlowDown and cut streams
from a fault-injecting proxy, wrong credentials, and a variant cache that becomes read-only. Nothing is lost."""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import s3fs
import torch
from loader_helpers import uneven_dataset
from s3_proxy import fault_proxy
from seaweed import seaweed_server

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.augment.stage import AugmentStage

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def _rows(batch) -> list[tuple[str, float]]:
    return [(key, float(image.sum())) for key, image in zip(batch["key"], batch["image"], strict=True)]


def _epoch(loader) -> list[tuple[str, float]]:
    return [row for batch in loader for row in _rows(batch)]


def _options(endpoint: str, key: str = "meddiffuse-test", secret: str = "meddiffuse-test-secret") -> dict:
    return {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("reader", "workers"), [("auto", 2), ("fsspec", 2), ("fsspec", 0)])
def test_an_outage_of_a_minute_mid_epoch_loses_nothing(tmp_path, reader, workers, monkeypatch):
    """SIGKILL the server after three batches, bring it back a minute later: the epoch finishes, each sample once,
    whether the worker processes read through obstore (auto) or s3fs, or the main process reads (workers=0), and
    the waiting shows in loader.counters["retries"] (the client libraries' own retries are off)."""
    monkeypatch.setenv("MEDDIFFUSE_S3_READER", reader)
    local = uneven_dataset(tmp_path, samples=240, shard_size=10)
    with MedDiffuseLoader(str(local), 8, as_dict=True, seed=3, num_workers=workers) as loader:
        expected = _epoch(loader)
    with seaweed_server() as server:
        fs = s3fs.S3FileSystem(**server.storage_options)
        fs.mkdir("outage")
        fs.put(str(local), "outage/ds", recursive=True)
        outage: dict[str, float] = {}

        given_up = threading.Event()  # the test failed meanwhile: the server folder is going away, do not restart

        def restart_later() -> None:  # weed takes ~20 s to come back after a SIGKILL: down ~60 s in all
            if not given_up.wait(38):
                server.start()
                outage["seconds"] = time.monotonic() - outage["killed"]

        seen = []
        restarter = threading.Thread(target=restart_later)
        try:
            with MedDiffuseLoader(
                "s3://outage/ds",
                8,
                as_dict=True,
                seed=3,
                num_workers=workers,
                prefetch=1,
                storage_options=server.storage_options,
            ) as loader:
                for index, batch in enumerate(loader):
                    seen += _rows(batch)
                    if index == 2:
                        server.kill()
                        outage["killed"] = time.monotonic()
                        restarter.start()
                counters = dict(loader.counters)
        finally:
            given_up.set()
            if restarter.is_alive():
                restarter.join()
    assert outage["seconds"] >= 50, f"the outage lasted {outage['seconds']:.0f}s"
    print(f"outage {outage['seconds']:.1f}s, loader counters {counters}")
    assert seen == expected, "the same samples, once each, in the same order as from local disk"
    assert counters["retries"] > 0 and counters.get("skipped", 0) == 0
    assert (counters.get("shards_via_obstore", 0) > 0) == (reader == "auto" and workers > 0)


def test_slowdown_and_streams_cut_short_are_retried_and_lose_nothing(tmp_path, s3_server, s3_bucket):
    """503 SlowDown answers and object bodies cut halfway, read through s3fs in the main process: its own retries
    and botocore's are off, so each fault is one retry of the loader's RetryPolicy, counted; the epoch is exactly
    the local one."""
    local = uneven_dataset(tmp_path, samples=60, shard_size=6)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    with MedDiffuseLoader(str(local), 8, as_dict=True, seed=1) as loader:
        expected = _epoch(loader)
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        with MedDiffuseLoader(f"{s3_bucket}/ds", 8, as_dict=True, seed=1, storage_options=_options(endpoint)) as loader:
            plan.slowdowns, plan.cuts = 6, 4
            assert _epoch(loader) == expected
            counters = dict(loader.counters)
    assert plan.sent["slowdown"] == 6 and plan.sent["cut"] == 4, plan.sent
    assert counters["retries"] == 10, counters
    assert counters.get("skipped", 0) == 0 and counters["shards_verified"] == 10


def test_obstore_reads_leave_every_fault_to_the_loaders_retries_and_lose_nothing(tmp_path, s3_server, s3_bucket):
    """Worker processes read shards through obstore with its own retries off: each injected fault is one retry of
    the loader's RetryPolicy, counted, and the epoch is exactly the local one."""
    local = uneven_dataset(tmp_path, samples=60, shard_size=6)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    with MedDiffuseLoader(str(local), 8, as_dict=True, seed=1, num_workers=1) as loader:
        expected = _epoch(loader)
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        plan.only_suffix, plan.slowdowns, plan.cuts = ".tar", 3, 3  # the workers start reading on construction
        with MedDiffuseLoader(
            f"{s3_bucket}/ds", 8, as_dict=True, seed=1, num_workers=1, storage_options=_options(endpoint)
        ) as loader:
            assert _epoch(loader) == expected
            counters = dict(loader.counters)
    assert plan.sent["slowdown"] == 3 and plan.sent["cut"] == 3, plan.sent
    assert counters["shards_via_obstore"] == 10 and counters["retries"] == 6, counters
    assert counters.get("skipped", 0) == 0 and counters["shards_verified"] == 10


def test_wrong_credentials_fail_fast_without_a_retry_storm(tmp_path, s3_server, s3_bucket):
    local = uneven_dataset(tmp_path, samples=12, shard_size=6)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(PermissionError) as info:
            MedDiffuseLoader(f"{s3_bucket}/ds", 4, storage_options=_options(endpoint, secret="wrong-secret"))
    assert plan.sent["requests"] <= 3, plan.sent  # no retry storm: a 403 is never retried
    assert "wrong-secret" not in str(info.value)


class _Generator:
    """A stand-in for the diffusion generator that counts its calls (the real one is tested elsewhere)."""

    identity, strength = "counting-generator-v1", 0.5

    def __init__(self) -> None:
        self.calls = 0

    def to(self, device):
        return self

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        self.calls += 1
        return 1.0 - images


def test_a_variant_cache_that_becomes_read_only_is_generated_around_with_one_warning(tmp_path, s3_server, s3_bucket):
    local = uneven_dataset(tmp_path, samples=48, shard_size=8)
    generator = _Generator()
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        s3fs.S3FileSystem.clear_instance_cache()
        stage = AugmentStage(
            "dafusion",
            2,
            generator=generator,
            variant_cache=f"{s3_bucket}/variants",
            storage_options=_options(endpoint),
        )
        with warnings.catch_warnings(record=True) as caught, MedDiffuseLoader(str(local), 8, augment=stage) as loader:
            warnings.simplefilter("always")
            batches = iter(loader)
            next(batches)
            written = stage.counters["cache_written"] if "cache_written" in stage.counters else None
            plan.deny_writes = True  # the bucket policy changes under the running job
            rest = list(batches)
    assert len(rest) == len(loader) - 1 and all(torch.isfinite(images).all() for images, _ in rest)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len([m for m in messages if "not writable" in m]) == 1, messages
    assert plan.sent["denied"] >= 1 and generator.calls == len(loader), "every batch still got its variants"
    assert written is None or written > 0
    # read-only from the start (SeaweedFS's own refusal for an identity without Write): the same single warning
    reader = AugmentStage(
        "dafusion",
        2,
        generator=_Generator(),
        variant_cache=f"{s3_bucket}/variants-2",
        storage_options=s3_server.read_only_storage_options,
    )
    with warnings.catch_warnings(record=True) as caught, MedDiffuseLoader(str(local), 8, augment=reader) as loader:
        warnings.simplefilter("always")
        assert len(list(loader)) == len(loader)
    assert len([w for w in caught if "not writable" in str(w.message)]) == 1
