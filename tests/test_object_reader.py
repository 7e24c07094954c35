"""The obstore shard reader: when it may stand in for s3fs, what it reads, and how its errors are classified.

Everything that uses obstore runs in a spawned process (see obstore_checks.py): its runtime does not survive a
fork, and the loader tests rely on this test process never having used it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import obstore_checks
import pytest

from meddiffuse_stream.storage import object_reader
from meddiffuse_stream.storage.location import Location
from meddiffuse_stream.storage.object_reader import MODE_VARIABLE, reader_for, s3_config, store_settings
from meddiffuse_stream.storage.retry import is_transient

KEYS = {"key": "AK", "secret": "SK"}
TRANSLATED = {"access_key_id": "AK", "secret_access_key": "SK"}
ENDPOINT = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:8333"}}


def _in_fresh_process(function, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


@pytest.mark.parametrize(
    ("options", "environ", "expected"),
    [
        ({**KEYS, **ENDPOINT}, {}, {**TRANSLATED, "endpoint": "http://127.0.0.1:8333", "region": "us-east-1"}),
        (
            {**KEYS, "token": "T", "client_kwargs": {"region_name": "eu-west-1"}},
            {},
            {**TRANSLATED, "session_token": "T", "region": "eu-west-1"},
        ),
        (
            {**KEYS, "endpoint_url": "https://minio.example", "skip_instance_cache": True},
            {"AWS_REGION": "eu-west-2"},
            {**TRANSLATED, "endpoint": "https://minio.example", "region": "eu-west-2"},
        ),
        (
            {},
            {
                "AWS_ACCESS_KEY_ID": "EK",
                "AWS_SECRET_ACCESS_KEY": "ES",
                "AWS_SESSION_TOKEN": "ET",
                "AWS_ENDPOINT_URL": "http://h:1",
            },
            {
                "access_key_id": "EK",
                "secret_access_key": "ES",
                "session_token": "ET",
                "endpoint": "http://h:1",
                "region": "us-east-1",
            },
        ),
        (
            {},
            {
                "AWS_ACCESS_KEY_ID": "EK",
                "AWS_SECRET_ACCESS_KEY": "ES",
                "AWS_ENDPOINT_URL": "http://general:1",
                "AWS_ENDPOINT_URL_S3": "http://s3-only:1",
            },
            {"access_key_id": "EK", "secret_access_key": "ES", "endpoint": "http://s3-only:1", "region": "us-east-1"},
        ),
        (
            {"anon": True, "client_kwargs": {"region_name": "us-west-2"}},
            {},
            {"skip_signature": True, "region": "us-west-2"},
        ),
    ],
)
def test_settings_that_reach_what_s3fs_would_reach_are_translated(options, environ, expected):
    assert s3_config(options, environ) == (expected, "")


def test_store_settings_address_like_botocore_and_leave_retries_to_the_loader():
    aws = store_settings("scans", {"region": "eu-west-1"})
    assert aws["config"]["virtual_hosted_style_request"] is True and aws["retry_config"] == {"max_retries": 0}
    assert "virtual_hosted_style_request" not in store_settings("scans.v2", {"region": "eu-west-1"})["config"]
    local = store_settings("scans", {"endpoint": "http://127.0.0.1:8333", "region": "us-east-1"})
    assert "virtual_hosted_style_request" not in local["config"] and local["client_options"]["allow_http"] is True
    assert store_settings("scans", {"endpoint": "https://minio"})["client_options"]["allow_http"] is False


@pytest.mark.parametrize(
    ("options", "environ", "why"),
    [
        ({**KEYS, **ENDPOINT, "profile": "research"}, {}, "'profile'"),
        ({**KEYS, **ENDPOINT, "config_kwargs": {"s3": {"addressing_style": "virtual"}}}, {}, "'config_kwargs'"),
        ({**KEYS, "client_kwargs": {"endpoint_url": "https://h", "verify": False}}, {}, "'verify'"),
        ({"key": "AK", **ENDPOINT}, {}, "only one of key and secret"),
        ({**KEYS, **ENDPOINT}, {"AWS_SESSION_TOKEN": "T"}, "AWS_SESSION_TOKEN"),
        (
            {},
            {"AWS_ACCESS_KEY_ID": "EK", "AWS_SECRET_ACCESS_KEY": "ES", "AWS_PROFILE": "p", "AWS_REGION": "r"},
            "profile",
        ),
        (ENDPOINT, {}, "instance role"),
        (KEYS, {}, "no endpoint and no region"),
        (KEYS, {"AWS_ENDPOINT_URL": "http://h:1", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, "no endpoint"),
    ],
)
def test_anything_else_keeps_s3fs_and_says_why(options, environ, why):
    config, reason = s3_config(options, environ)
    assert config is None and why in reason


class GenericError(Exception):
    """Named and placed as obstore's: its messages carry the HTTP status as below."""

    __module__ = "obstore.exceptions"


class PermissionDeniedError(Exception):
    __module__ = "obstore.exceptions"


@pytest.mark.parametrize(
    ("error", "kind", "transient"),
    [
        (GenericError("Server returned non-2xx status code: 503 Service Unavailable: SlowDown"), ConnectionError, True),
        (GenericError("HTTP error: request or response body error"), ConnectionError, True),
        (GenericError("HTTP error: error sending request"), ConnectionError, True),
        (
            GenericError("Error performing GET http://h/b/k in 403.357µs - HTTP error: error sending request"),
            ConnectionError,
            True,
        ),
        (GenericError("Server returned non-2xx status code: 429 Too Many Requests"), ConnectionError, True),
        (GenericError("Server returned non-2xx status code: 301 Moved Permanently"), OSError, False),
        (
            GenericError("Server returned non-2xx status code: 400 Bad Request: AuthorizationHeaderMalformed"),
            OSError,
            False,
        ),
        (PermissionDeniedError("403 Forbidden: SignatureDoesNotMatch"), PermissionError, False),
        (FileNotFoundError("Object at location x not found"), FileNotFoundError, False),
    ],
)
def test_obstore_errors_become_what_the_retry_policy_reads(error, kind, transient):
    translated = object_reader._translate(error, "bucket/train/train-000001.tar")
    assert type(translated) is kind and is_transient(translated) is transient
    assert "s3://bucket/train/train-000001.tar" in str(translated)
    assert "µs" not in str(translated)  # obstore's timing is noise in a message for users
    if "301" in str(error):
        assert "region" in str(translated) and MODE_VARIABLE in str(translated)


def test_errors_that_are_not_obstores_pass_unchanged():
    bug = TypeError("a bug in the caller")
    assert object_reader._translate(bug, "bucket/x.tar") is bug and not is_transient(bug)


class _Recorded:
    """Stands in for ObstoreReader: this process must not start obstore's runtime (see the module docstring)."""

    name = "obstore"

    def __init__(self, bucket, config, connect_timeout, read_timeout, min_bytes_per_second=None):
        self.bucket, self.config = bucket, config
        self.timeouts = (connect_timeout, read_timeout)


def test_only_a_worker_process_whose_parent_never_imported_obstore_may_use_it(monkeypatch):
    monkeypatch.setattr(object_reader, "ObstoreReader", _Recorded)
    monkeypatch.setattr(object_reader, "_readers", {})
    monkeypatch.setattr(object_reader, "_allowed", False)
    assert reader_for(Location("s3://bucket/ds", {**KEYS, **ENDPOINT})) is None, "main process, thread workers"
    monkeypatch.setitem(sys.modules, "obstore", object())
    assert object_reader.allow_in_this_process() is False  # a forked child of a process that had it: would hang
    monkeypatch.delitem(sys.modules, "obstore")
    assert object_reader.allow_in_this_process() is True
    reader = reader_for(Location("s3://bucket/ds/train", {**KEYS, **ENDPOINT}))
    assert isinstance(reader, _Recorded) and reader.bucket == "bucket" and reader.config["access_key_id"] == "AK"
    assert reader.timeouts == (10.0, 20.0), "the loader's RetryPolicy timeouts"
    assert reader_for(Location("s3://bucket/ds", {**KEYS, **ENDPOINT})) is reader, "one per bucket and settings"
    assert reader_for(Location("s3://bucket/ds", {**KEYS, "profile": "p"})) is None
    assert reader_for(Location(str(Path("/tmp/ds")))) is None
    monkeypatch.setenv(MODE_VARIABLE, "fsspec")
    assert reader_for(Location("s3://bucket/ds", {**KEYS, **ENDPOINT})) is None
    monkeypatch.setenv(MODE_VARIABLE, "fast")
    with pytest.raises(ValueError, match=MODE_VARIABLE):
        reader_for(Location("s3://bucket/ds", {**KEYS, **ENDPOINT}))


@pytest.mark.s3
def test_reads_whole_in_pieces_from_an_offset_and_at_the_end(s3_server, s3_bucket):
    import s3fs

    data = np.random.default_rng(1).bytes(5 << 20)
    path = f"{s3_bucket.removeprefix('s3://')}/reader/shard-000000.tar"
    s3fs.S3FileSystem(**s3_server.storage_options).pipe(path, data)
    options = s3_server.storage_options
    _in_fresh_process(
        obstore_checks.reads_whole_in_pieces_and_from_an_offset,
        s3_server.endpoint,
        path,
        hashlib.sha256(data).hexdigest(),
        options["key"],
        options["secret"],
    )
    _in_fresh_process(obstore_checks.errors_are_classified, s3_server.endpoint, path, options["key"], options["secret"])


@pytest.mark.s3
@pytest.mark.parametrize("kind", ["slowdowns", "cuts"])
def test_slowdown_and_a_body_cut_short_are_errors_the_loader_retries(s3_server, s3_bucket, kind):
    import s3fs
    from s3_proxy import fault_proxy

    path = f"{s3_bucket.removeprefix('s3://')}/reader/fault-{kind}.tar"
    s3fs.S3FileSystem(**s3_server.storage_options).pipe(path, np.random.default_rng(2).bytes(1 << 20))
    options = s3_server.storage_options
    with fault_proxy(s3_server.endpoint) as (endpoint, plan):
        setattr(plan, kind, 1)
        name = _in_fresh_process(
            obstore_checks.proxy_faults_are_transient, endpoint, path, options["key"], options["secret"], kind
        )
    assert name == "ConnectionError" and plan.sent[kind.rstrip("s")] == 1
