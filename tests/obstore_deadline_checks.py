"""The obstore half of the trickling-body case, run in a spawned process (obstore's runtime must never start in
the test process: see obstore_checks)."""

from __future__ import annotations

import numpy as np

from meddiffuse_stream.storage.object_reader import ObstoreReader, s3_config
from meddiffuse_stream.storage.retry import ObjectDeadlineError, ResumableReader, RetryPolicy, ShardReadError


def trickled_body_misses_its_deadline(endpoint: str, path: str, size: int, key: str, secret: str, policy: RetryPolicy):
    """``(first error's type, final message, retries counted)`` for a body the proxy trickles on every GET."""
    config, why = s3_config({"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}, {})
    assert config is not None, why
    reader = ObstoreReader(
        path.split("/", 1)[0], config, policy.connect_timeout, policy.read_timeout, policy.min_bytes_per_second
    )
    try:
        reader.open(path, 0, size).read()
        first = "no error"
    except ObjectDeadlineError as error:
        first = type(error).__name__
    retries: list[BaseException] = []
    stream = ResumableReader(
        lambda offset: reader.open(path, offset, size),
        what=f"s3://{path}",
        policy=policy,
        rng=np.random.default_rng(0),
        on_retry=retries.append,
        hint=f"endpoint {endpoint}",
    )
    try:
        stream.read()
        final = "no error"
    except ShardReadError as error:
        final = str(error)
    return first, final, len(retries)
