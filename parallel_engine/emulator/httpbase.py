"""A small threaded HTTP server on loopback, and a handler with JSON helpers.

Every emulated service (Compute, the Storage proxy, metadata) builds on these so that they bind the
same way (127.0.0.1, a port chosen by the kernel), speak HTTP/1.1 with keep-alive like Google's
front ends, and stop cleanly.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from parallel_engine.emulator.identity import Caller, TokenRegistry
from parallel_engine.emulator.netutil import LOOPBACK
from parallel_engine.emulator.traffic import AUTHENTICATE_HEADER, FaultRule, Traffic

JSON = "application/json; charset=UTF-8"


@dataclass
class Reply:
    """One answer: status, body, Content-Type and any other headers."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(payload).encode(), JSON, dict(headers or {}))


class LoopbackServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to 127.0.0.1 that runs itself in a daemon thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        super().__init__((LOOPBACK, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        # A client that hangs up (a VM killed mid-call, a client closing a kept-alive connection)
        # is normal here; anything else is printed as usual.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, name: str) -> None:
        # `shutdown()` waits for the loop to look at its flag: at 0.1 s an emulator's servers
        # took 0.44-0.54 s to stop (0.13-0.15 s at 0.02), paid by every test that makes one.
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, name=name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()


def read_chunked(rfile: io.BufferedIOBase) -> Iterator[bytes]:
    """A chunked request body, chunk by chunk as it arrives (trailers are read and dropped)."""
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        yield rfile.read(size)
        rfile.readline()


class JsonHandler(BaseHTTPRequestHandler):
    """Request handler with the few helpers every emulated API needs."""

    protocol_version = "HTTP/1.1"
    server_version = "parallel-engine-emulator"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection does not hold a thread forever
    # An answer leaves in two writes (headers, body): with Nagle's algorithm on, the body waits
    # for the ACK of the headers, which the client delays by 40 ms. Google's front ends do not.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the default per-request stderr log (call counts are kept elsewhere)."""

    # -- request --------------------------------------------------------------------------
    @property
    def path_only(self) -> str:
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query, keep_blank_values=True)

    def query_one(self, key: str, default: str | None = None) -> str | None:
        values = self.query.get(key)
        return values[0] if values else default

    _anonymous: Caller | None = None  # who sends token-less calls on this connection (looked up once)

    def caller(self, tokens: TokenRegistry) -> Caller:
        """Who makes this call: by its bearer token, or, without one, by the process behind the connection."""
        header = self.headers.get("Authorization")
        if header and header.strip():
            return tokens.caller(header)
        if self._anonymous is None:
            peer = (int(self.client_address[1]), int(self.connection.getsockname()[1]))
            self._anonymous = tokens.caller(None, peer)
        return self._anonymous

    def read_body(self) -> bytes:
        """The whole request body, plain or chunked (curl -T - sends chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return b"".join(read_chunked(self.rfile))
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- one API call, as Google's front end answers it ------------------------------------------
    def answer_call(
        self,
        traffic: Traffic | None,
        caller: Caller,
        operation: str,
        act: Callable[[], Reply],
        unauthenticated: Callable[[], Any],
        fault_body: Callable[[FaultRule], Any],
    ) -> None:
        """Count the call and answer it, in the order every emulated service shares.

        The call is admitted (counted, slowed by any latency rule); a fault injected for it answers in
        its place; a caller without valid credentials (`caller.problem`) gets 401 with the service's
        `unauthenticated()` body; any other call gets `act()`. A fault injected with `after` lets that
        401 or action happen first, then replaces the answer (the work is done, the caller never hears
        so). As on Google, a 401 carries WWW-Authenticate, whoever made it, and no other answer does.
        The request body must have been read already.
        """
        fault = None if traffic is None else traffic.admit(self.command, self.path, caller, operation)
        if fault is not None and not fault.after:
            reply = Reply.json(fault.status, fault_body(fault))
        else:
            if caller.problem is not None:
                reply = Reply.json(401, unauthenticated())
                if traffic is not None:
                    traffic.refused(operation, caller)
            else:
                reply = act()
            if fault is not None:  # carried out, but the caller never hears so
                reply = Reply.json(fault.status, fault_body(fault))
        headers = {key: value for key, value in reply.headers.items() if key.lower() != "www-authenticate"}
        if reply.status == 401:
            headers.update(AUTHENTICATE_HEADER)
        self.send_bytes(reply.status, reply.body, reply.content_type, headers)

    # -- response -------------------------------------------------------------------------
    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str = JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), headers=headers)

    def send_text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, text.encode(), "text/plain; charset=utf-8", headers)
