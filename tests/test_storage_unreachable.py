"""Endpoints that never answer — a refused port, a host name that does not resolve, TLS to a plain-HTTP server, a
certificate nobody trusts — fail at the first try with one line naming the URL, the endpoint and the setting to
check, instead of retrying for the policy's 90 s (no S3 server needed). Waits are bounded by pytest timeouts; what
is asserted is the message and the number of retries."""

from __future__ import annotations

import contextlib
import http.server
import pickle
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.cli import main
from meddiffuse_stream.storage import Location, RetryPolicy, StorageUnreachableError, contact

REFUSED = "http://127.0.0.1:1"  # nothing listens on port 1: every connection is refused
UNRESOLVED = "http://no-such-host.invalid:8333"  # .invalid never resolves (RFC 6761)
ENDPOINT_OPTION = 'storage_options["client_kwargs"]["endpoint_url"]'


@pytest.fixture(autouse=True)
def fresh_contacts(monkeypatch) -> None:
    """Each test starts with no endpoint known to have answered (and leaves the process's registry as it was)."""
    monkeypatch.setattr(contact, "_answered", set())


def _options(endpoint: str) -> dict:
    return {"key": "someone", "secret": "something", "client_kwargs": {"endpoint_url": endpoint}}


def _fails_at_once(endpoint: str) -> str:
    """The message of the first read of a location at ``endpoint``, asserting that nothing was retried."""
    retries: list[BaseException] = []
    location = Location("s3://bucket/ds", _options(endpoint), on_retry=retries.append)
    with pytest.raises(StorageUnreachableError) as info:
        location.read_bytes("dataset.json")
    text = str(info.value)
    assert "\n" not in text and info.value.__cause__ is not None, "one line, the client's exception chained"
    assert text.startswith(f"s3://bucket/ds/dataset.json (endpoint {endpoint}): "), text
    assert retries == []
    return text


@contextlib.contextmanager
def _https_server(folder: Path | None) -> Iterator[str]:
    """A local HTTP server, plain (``folder`` None, reached as https://) or TLS with a self-signed certificate."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    if folder is not None:
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed: cannot make a self-signed certificate")
        key, cert = folder / "key.pem", folder / "cert.pem"
        command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        subprocess.run([*command, "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (REFUSED, "connection refused, and this endpoint has not answered since the process started: check the host"),
        (UNRESOLVED, "the host 'no-such-host.invalid' does not resolve: check the host name"),
    ],
)
def test_an_endpoint_that_never_answered_fails_at_the_first_try(endpoint, expected):
    """A wrong port or host is a setting, not a passing fault (the default policy would wait 90 s)."""
    text = _fails_at_once(endpoint)
    assert expected in text and ENDPOINT_OPTION in text
    with pytest.raises(StorageUnreachableError, match=expected):  # the loader, with its default policy
        MedDiffuseLoader("s3://bucket/ds", 4, storage_options=_options(endpoint))


@pytest.mark.timeout(30)
def test_tls_to_a_server_without_tls_says_so():
    with _https_server(None) as endpoint:
        text = _fails_at_once(endpoint)
    assert "TLS failure (the server does not speak TLS): for a server without TLS use an http:// endpoint" in text


@pytest.mark.timeout(60)
def test_an_untrusted_certificate_points_to_aws_ca_bundle(tmp_path):
    with _https_server(tmp_path) as endpoint:
        text = _fails_at_once(endpoint)
    assert "TLS failure (its certificate is not trusted)" in text and "set AWS_CA_BUNDLE" in text


@pytest.mark.timeout(60)
def test_the_endpoint_variable_is_named_when_it_set_the_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", REFUSED)
    location = Location("s3://bucket/ds", {"key": "someone", "secret": "something"})
    with pytest.raises(StorageUnreachableError, match="check the host and port in AWS_ENDPOINT_URL, and that"):
        location.read_bytes("dataset.json")


@pytest.mark.timeout(120)
def test_a_spawned_process_knows_the_endpoint_answered_in_its_parent(tmp_path):
    """A Location pickled after its endpoint answered carries that fact: a spawned worker retries a refusal (and
    one pickled before does not)."""
    policy = RetryPolicy(attempts=3, base=0.01, cap=0.02, deadline=10)
    location = Location("s3://bucket/ds", _options(REFUSED), retry=policy)
    child = (
        "import pickle, sys\n"
        "location = pickle.load(open(sys.argv[1], 'rb'))\n"
        "retries = []\n"
        "location.on_retry = retries.append\n"
        "try:\n"
        "    location.read_bytes('dataset.json')\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, len(retries))\n"
    )
    runs = []
    for answered in (False, True):
        if answered:
            contact.mark_answered(location.contact_key)
        path = tmp_path / f"location-{answered}.pickle"
        path.write_bytes(pickle.dumps(location))
        done = subprocess.run(
            [sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=100, check=True
        )
        runs.append(done.stdout.split())
    assert runs == [["StorageUnreachableError", "0"], ["ShardReadError", "2"]]


@pytest.mark.timeout(60)
def test_the_cli_prints_one_line_and_no_traceback(capsys):
    options = ["--storage-option", f"endpoint_url={REFUSED}", "--storage-option", "key=someone"]
    code = main(["index", "s3://bucket/ds", "--quiet", *options, "--storage-option", "secret=something"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"meddiffuse-stream index: error: s3://bucket/ds (endpoint {REFUSED}): connection refused")
    assert 'storage_options["endpoint_url"]' in err
