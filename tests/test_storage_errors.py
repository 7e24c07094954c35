"""Storage failures as one line naming the URL, the endpoint and the setting to check, against the real SeaweedFS
server: missing or wrong credentials, a missing bucket or prefix; and a refusal after the endpoint answered, which
is a restart and retried (endpoints that never answer: test_storage_unreachable.py). What is asserted is the message
and how many requests or retries were made; waits are bounded by pytest timeouts and small retry policies."""

from __future__ import annotations

import threading

import pytest
import s3fs
from loader_helpers import uneven_dataset
from s3_proxy import fault_proxy

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.storage import Location, RetryPolicy, StorageAccessError, StorageNotFoundError
from meddiffuse_stream.storage.contact import unreachable_kind

pytestmark = pytest.mark.s3


def _options(endpoint: str, key: str = "meddiffuse-test", secret: str = "meddiffuse-test-secret") -> dict:
    return {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}


@pytest.fixture
def dataset(tmp_path, s3_server, s3_bucket) -> str:
    """A small dataset on the server; the URL."""
    local = uneven_dataset(tmp_path, samples=12, shard_size=6)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_bucket}/ds", recursive=True)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"{s3_bucket}/ds"


@pytest.fixture
def no_aws_environment(monkeypatch, tmp_path) -> None:
    """No identity anywhere botocore looks: variables, files, instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and error.__cause__ is not None, "one line, the client's exception chained"
    return text


def test_missing_credentials_name_the_variables_and_send_nothing(dataset, s3_server, no_aws_environment):
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        with pytest.raises(StorageAccessError) as info:
            MedDiffuseLoader(dataset, 4, storage_options={"client_kwargs": {"endpoint_url": endpoint}})
    text = _one_line(info.value)
    assert f"{dataset}/dataset.json (endpoint {endpoint}): no credentials found" in text
    assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in text
    assert plan.sent["requests"] == 0, plan.sent  # botocore stops before signing: nothing to retry


def test_a_wrong_secret_names_the_options_it_came_from_without_a_retry(dataset, s3_server):
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        with pytest.raises(StorageAccessError) as info:
            MedDiffuseLoader(dataset, 4, storage_options=_options(endpoint, secret="wrong-secret"))
    text = _one_line(info.value)
    assert f"{dataset}/dataset.json (endpoint {endpoint}): access denied" in text
    assert 'check storage_options "key" / "secret"' in text and "wrong-secret" not in text
    assert plan.sent["requests"] == 1, plan.sent  # one HEAD, answered 403, never retried


def test_an_unknown_key_from_the_environment_names_the_variables(dataset, s3_server, no_aws_environment, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nothing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    with pytest.raises(StorageAccessError) as info:
        MedDiffuseLoader(dataset, 4)
    text = _one_line(info.value)
    assert f"(endpoint {s3_server.endpoint}): access denied" in text
    assert "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in text and "nobody" not in text


def test_a_missing_bucket_names_it_and_the_endpoint_variable(s3_server, no_aws_environment, monkeypatch):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StorageNotFoundError) as info:
        MedDiffuseLoader("s3://no-such-bucket-here/ds", 4)
    text = _one_line(info.value)
    assert f"(endpoint {s3_server.endpoint}): bucket 'no-such-bucket-here' does not exist" in text
    assert "AWS_ENDPOINT_URL names the server" in text


def test_a_missing_prefix_names_the_url_and_the_endpoint(dataset, s3_server):
    missing = dataset.rsplit("/", 1)[0] + "/no-such-prefix"
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        with pytest.raises(StorageNotFoundError) as info:
            MedDiffuseLoader(missing, 4, storage_options=_options(endpoint))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{missing} (endpoint {endpoint}): no dataset.json and no shards")
    assert 'check the prefix in the URL, and that storage_options["client_kwargs"]["endpoint_url"]' in text
    assert len(set(plan.log)) == len(plan.log), plan.log  # a HEAD of dataset.json and listings, none retried


@pytest.mark.timeout(120)
def test_a_refusal_after_the_endpoint_answered_is_retried_until_it_is_back(dataset, s3_server):
    """A server restarting (as its clients see it: the port refuses, then answers again) is retried and survived."""
    retries: list[BaseException] = []
    policy = RetryPolicy(base=0.1, cap=0.5, deadline=60)
    with fault_proxy(s3_server.endpoint) as (endpoint, _):
        location = Location(dataset, _options(endpoint), retry=policy, on_retry=retries.append)
        expected = location.read_bytes("dataset.json")  # the endpoint answered
    port = int(endpoint.rsplit(":", 1)[1])
    back = threading.Event()
    stop = threading.Event()

    def restart() -> None:  # back on the same port once the reader has been refused twice
        for _ in range(600):
            if sum(unreachable_kind(e) == "refused" for e in retries) >= 2 or stop.is_set():
                break
            stop.wait(0.05)
        with fault_proxy(s3_server.endpoint, port=port):
            back.set()
            stop.wait(60)

    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    try:
        assert location.read_bytes("dataset.json") == expected
    finally:
        stop.set()
        restarter.join(timeout=30)
    assert back.is_set() and sum(unreachable_kind(e) == "refused" for e in retries) >= 2, retries
