"""Shared fixtures: a real S3 server (SeaweedFS on 127.0.0.1) and the dataset layout builders."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from seaweed import S3Server, seaweed_server


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    with seaweed_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh bucket URL (``s3://name``) on the test server."""
    import s3fs

    name = f"t{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**s3_server.storage_options).mkdir(name)
    return f"s3://{name}"
