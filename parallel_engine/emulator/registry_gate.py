"""The registry's front door: every call needs a valid token, as Artifact Registry's does.

It answers a call without credentials as Artifact Registry answers it: 401 with `WWW-Authenticate:
Bearer realm=".../v2/token",service="..."`. Docker then asks that realm for a registry token,
sending what its credential helper gave it (docker-credential-gcr on a VM: user `_dcgcr_2_0_0_token`
or `oauth2accesstoken`, the OAuth access token as the password); an OAuth access token the emulator
minted buys a registry token, which the registry calls then carry. An OAuth token also works
directly, as a bearer token or as that Basic password. Everything else is streamed, both ways, to
the distribution registry behind it.

Registry tokens live as long as the emulator's OAuth tokens, but at least a minute: docker assumes
60 s when a token endpoint says less (distribution's `minimumTokenLifetimeSeconds`).
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from parallel_engine.emulator.httpbase import LoopbackServer, read_chunked
from parallel_engine.emulator.identity import UNKNOWN, TokenRegistry
from parallel_engine.emulator.netutil import LOOPBACK

MIN_TOKEN_S = 60.0
CHUNK = 1 << 20
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "trailers", "transfer-encoding", "upgrade", "authorization"}  # fmt: skip


class RegistryGate:
    """A streaming proxy on 127.0.0.1 in front of one registry, that lets only token holders in."""

    def __init__(self, tokens: TokenRegistry) -> None:
        self.tokens = tokens
        self.upstream_port = 0
        self._lock = threading.Lock()
        self._registry_tokens: dict[str, float] = {}  # registry token -> time.monotonic() it expires
        self._server = LoopbackServer(_make_handler(self))

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self._server.port}"

    def start(self, upstream_port: int) -> RegistryGate:
        self.upstream_port = upstream_port
        self._server.start("emulator-registry-gate")
        return self

    def stop(self) -> None:
        self._server.stop()

    # -- credentials ------------------------------------------------------------------------
    def oauth_valid(self, token: str) -> bool:
        """Whether `token` is a live OAuth token of a known caller (a VM's, or an account's)."""
        caller = self.tokens.bearer(token)
        return caller.problem is None and caller.kind != UNKNOWN

    def allowed(self, authorization: str) -> bool:
        """Whether a registry call's Authorization header is a live registry or OAuth token."""
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            with self._lock:
                expires = self._registry_tokens.get(value.strip())
            return (expires is not None and time.monotonic() < expires) or self.oauth_valid(value.strip())
        if scheme.lower() == "basic":
            return self.oauth_valid(_basic_password(value))
        return False

    def registry_token(self, authorization: str) -> dict[str, Any] | None:
        """The token endpoint's answer for a caller whose credentials hold a live OAuth token, else None."""
        scheme, _, value = authorization.strip().partition(" ")
        password = _basic_password(value) if scheme.lower() == "basic" else value.strip()
        if scheme.lower() not in ("basic", "bearer") or not self.oauth_valid(password):
            return None
        lifetime = max(MIN_TOKEN_S, self.tokens.lifetime())
        token = f"registry-{secrets.token_urlsafe(24)}"
        now = time.monotonic()
        with self._lock:
            self._registry_tokens = {t: e for t, e in self._registry_tokens.items() if e > now}
            self._registry_tokens[token] = now + lifetime
        issued = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"token": token, "access_token": token, "expires_in": int(lifetime), "issued_at": issued}


def _basic_password(value: str) -> str:
    try:
        return base64.b64decode(value.strip()).decode().partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return ""


def _make_handler(gate: RegistryGate) -> type[BaseHTTPRequestHandler]:
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "parallel-engine-emulator-registry"
        sys_version = ""
        timeout = 300
        disable_nagle_algorithm = True  # as JsonHandler: no 40 ms stall between headers and body

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def _answer(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            path = urlsplit(self.path).path
            authorization = self.headers.get("Authorization", "")
            if path.rstrip("/") == "/v2/token":
                self._drain()
                answer = gate.registry_token(authorization) if authorization else None
                if answer is None:
                    self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication failed"}]},
                                 {"WWW-Authenticate": f'Basic realm="{gate.host}"'})  # fmt: skip
                else:
                    self._answer(200, answer)
                return
            if not authorization or not gate.allowed(authorization):
                self._drain()
                challenge = f'Bearer realm="http://{gate.host}/v2/token",service="{gate.host}"'
                self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required",
                                               "detail": None}]}, {"WWW-Authenticate": challenge})  # fmt: skip
                return
            self._forward()

        def _body_chunks(self) -> Iterator[bytes]:
            """The request body as it arrives, plain or chunked, in pieces of at most CHUNK bytes."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                yield from read_chunked(self.rfile)
                return
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                piece = self.rfile.read(min(CHUNK, left))
                if not piece:
                    return
                left -= len(piece)
                yield piece

        def _drain(self) -> None:
            for _ in self._body_chunks():
                pass

        def _forward(self) -> None:
            conn = getattr(local, "conn", None) or http.client.HTTPConnection(LOOPBACK, gate.upstream_port, timeout=300)
            local.conn = None  # a connection goes back only after a whole exchange
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        conn.putheader(key, value)
                if chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for piece in self._body_chunks():
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if chunked:
                    conn.send(b"0\r\n\r\n")
                response = conn.getresponse()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._answer(503, {"errors": [{"code": "UNAVAILABLE", "message": "registry unavailable"}]})
                return
            self._relay(response)
            local.conn = conn

        def _relay(self, response: http.client.HTTPResponse) -> None:
            length = response.getheader("Content-Length")
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            streamed = length is None and self.command != "HEAD" and response.status not in (204, 304)
            if length is not None:
                self.send_header("Content-Length", length)
            elif streamed:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", "0")
            self.end_headers()
            if self.command == "HEAD":
                response.read()
                return
            while piece := response.read(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if streamed else piece)
            if streamed:
                self.wfile.write(b"0\r\n\r\n")

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler
