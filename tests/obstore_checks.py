"""Checks of the obstore shard reader against the real S3 server, run in a spawned process.

obstore's runtime does not survive a fork, so the test process itself must never use it: its forked decode workers
would then (rightly) refuse obstore and the loader tests would no longer cover it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from meddiffuse_stream.storage.object_reader import ObstoreReader, s3_config
from meddiffuse_stream.storage.retry import is_transient


def _reader(endpoint: str, bucket: str, key: str, secret: str) -> ObstoreReader:
    config, why = s3_config({"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}, {})
    assert config is not None, why
    return ObstoreReader(bucket, config)


def reads_whole_in_pieces_and_from_an_offset(endpoint: str, path: str, digest: str, key: str, secret: str) -> None:
    bucket = path.split("/", 1)[0]
    reader = _reader(endpoint, bucket, key, secret)
    whole = reader.open(path).read()
    assert hashlib.sha256(whole).hexdigest() == digest
    body = reader.open(path)
    sizes = np.random.default_rng(0).integers(1, 3 << 20, size=64)
    pieces = []
    for size in sizes:
        piece = body.read(int(size))
        assert len(piece) <= size
        pieces.append(piece)
        if not piece:
            break
    pieces.append(body.read())
    assert b"".join(pieces) == whole
    assert reader.open(path, 1000).read() == whole[1000:]
    assert reader.open(path, len(whole), len(whole)).read() == b""  # size known: no request past the end
    assert reader.open(path, len(whole)).read() == b""  # size unknown: the server's 416 means nothing is left


def errors_are_classified(endpoint: str, path: str, key: str, secret: str) -> None:
    """Missing and forbidden fail at once (never retried); the secret never appears in a message."""
    bucket = path.split("/", 1)[0]
    try:
        _reader(endpoint, bucket, key, secret).open(f"{bucket}/no/such/shard.tar").read()
    except FileNotFoundError as error:
        assert not is_transient(error) and "no/such/shard.tar" in str(error)
    else:
        raise AssertionError("a missing object must raise FileNotFoundError")
    try:
        _reader(endpoint, bucket, key, "wrong-secret").open(path).read()
    except PermissionError as error:
        assert not is_transient(error) and "wrong-secret" not in str(error)
    else:
        raise AssertionError("a wrong secret must raise PermissionError")
    try:
        _reader("http://127.0.0.1:9", bucket, key, secret).open(path).read()
    except ConnectionError as error:
        assert is_transient(error)
    else:
        raise AssertionError("a refused connection must raise ConnectionError")


def proxy_faults_are_transient(endpoint: str, path: str, key: str, secret: str, kind: str) -> str:
    """Behind the fault proxy, primed with one ``kind`` fault: the error must be one the loader retries."""
    bucket = path.split("/", 1)[0]
    try:
        _reader(endpoint, bucket, key, secret).open(path).read()
    except ConnectionError as error:
        assert is_transient(error), error
        return type(error).__name__
    raise AssertionError(f"a {kind} fault must raise ConnectionError")
