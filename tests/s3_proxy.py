"""A fault-injecting HTTP proxy in front of the S3 server: answers 503 SlowDown, cuts object bodies short, trickles
them a byte at a time, or refuses writes with 403 AccessDenied, as many times as a test asks, and logs every request
(so a test can count what a client fetched). The Host header is passed on unchanged, so SigV4 signatures made for
the proxy's address stay valid upstream. ``silent_endpoint`` is a server that accepts connections and never
answers."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


class FaultPlan:
    """What the proxy does to the next requests; every fault it injects is counted in ``sent``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slowdowns = 0  # object GETs answered 503 SlowDown
        self.cuts = 0  # object GETs whose body stops halfway (connection closed)
        self.hangs = 0  # object GETs never answered (the connection is held for hang_seconds, then closed)
        self.hang_seconds = 30.0
        self.trickles = 0  # object GETs whose body comes one byte every trickle_seconds (never a read timeout)
        self.trickle_seconds = 0.5
        self.deny_writes = False  # PUT/POST/DELETE answered 403 AccessDenied
        self.only_suffix = ""  # faults only for object reads whose key ends so (".tar": shards, not dataset.json)
        self.sent: Counter[str] = Counter()
        self.log: list[tuple[str, str, str]] = []  # (method, path, query) of every request, in order
        self.connections: set[socket.socket] = set()  # open client connections, cut when the proxy goes away

    def take(self, method: str, path: str, query: str) -> str | None:
        is_object_read = (
            method == "GET" and path.count("/") >= 2 and "list-type" not in query and path.endswith(self.only_suffix)
        )
        with self.lock:
            self.sent["requests"] += 1
            self.log.append((method, path, query))
            if method in ("PUT", "POST", "DELETE") and self.deny_writes:
                self.sent["denied"] += 1
                return "deny"
            if is_object_read and self.hangs > 0:
                self.hangs -= 1
                self.sent["hang"] += 1
                return "hang"
            if is_object_read and self.trickles > 0:
                self.trickles -= 1
                self.sent["trickle"] += 1
                return "trickle"
            if is_object_read and self.slowdowns > 0:
                self.slowdowns -= 1
                self.sent["slowdown"] += 1
                return "slowdown"
            if is_object_read and self.cuts > 0:
                self.cuts -= 1
                self.sent["cut"] += 1
                return "cut"
        return None


def _handler(upstream: str, plan: FaultPlan) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def setup(self) -> None:
            super().setup()
            with plan.lock:
                plan.connections.add(self.connection)

        def finish(self) -> None:
            with plan.lock:
                plan.connections.discard(self.connection)
            super().finish()

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

        def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
            self.send_response(status)
            for name, value in headers or [("Content-Type", "application/xml")]:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> None:
            body = self._body()
            path, _, query = self.path.partition("?")
            fault = plan.take(self.command, path, query)
            if fault == "hang":
                time.sleep(plan.hang_seconds)
                self.close_connection = True
                return None
            if fault == "slowdown":
                return self._reply(503, _SLOWDOWN)
            if fault == "deny":
                return self._reply(403, _DENIED)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            finally:
                connection.close()
            if self.command == "HEAD":  # no body, and the object's own Content-Length
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.end_headers()
                return None
            passed = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
            if fault == "trickle":
                self.send_response(response.status)
                for name, value in passed:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.close_connection = True
                for at in range(len(data)):  # until the client gives up and closes the connection
                    try:
                        self.wfile.write(data[at : at + 1])
                        self.wfile.flush()
                    except OSError:
                        return None
                    time.sleep(plan.trickle_seconds)
                return None
            if fault == "cut" and len(data) > 1:
                self.send_response(response.status)
                for name, value in passed:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return None
            return self._reply(response.status, data, passed)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # http.server's names

    return Forward


@contextlib.contextmanager
def fault_proxy(upstream: str, port: int = 0) -> Iterator[tuple[str, FaultPlan]]:
    """``(endpoint, plan)`` of a proxy on 127.0.0.1 in front of ``upstream``, for the duration of the block;
    ``port`` brings one back where an earlier one was (a server restart, as its clients see it)."""
    plan = FaultPlan()
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(upstream, plan))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", plan
    finally:
        server.shutdown()
        server.server_close()
        with plan.lock:  # kept-alive connections die with it, as with a server that stops
            for connection in plan.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def silent_endpoint() -> Iterator[tuple[str, list[socket.socket]]]:
    """``(endpoint, accepted)``: a listening socket that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(connection)  # held open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()
