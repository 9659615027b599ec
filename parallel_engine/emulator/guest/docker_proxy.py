"""Each VM's own Docker API endpoint: a Unix socket file in front of this machine's Docker engine.

A VM's `DOCKER_HOST` names it, so its script's `docker` calls, a docker SDK in a process it runs and
a container that mounts the socket (`-v $SOCKET:/var/run/docker.sock`, as a worker container
does) all reach the engine through it. Requests pass byte for byte - streamed answers (logs
--follow, wait, events) and hijacked connections (attach, exec start: `Upgrade: tcp`, with their
half-closes) included - except container creates: those are stamped with the VM's labels and
metadata address (docker_stamp.py), sent on a connection of their own, and their answer relayed.
`close()` stops new connections, lets creates in flight finish (so the removal by label that
follows sees every container the VM made) and cuts the rest.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from parallel_engine.emulator.guest.docker_stamp import CREATE_PATH, Stamp, stamp_create
from parallel_engine.emulator.guest.portmux import PortContext, PortMux
from parallel_engine.emulator.netutil import LOOPBACK

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
_BLOCK = 65536
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect", "upgrade", "te",
               "trailer", "host"}  # fmt: skip
_REASONS = {400: "Bad Request", 502: "Bad Gateway", 503: "Service Unavailable"}
#: `POST /containers/ID/attach` (and its websocket): the engine hijacks the connection, whatever the headers say.
ATTACH_PATH = re.compile(r"^(?:/v[0-9.]+)?/containers/[^/?]+/attach(?:/ws)?(?:\?|$)")


class Upstream:
    """Where this machine's Docker engine answers: `docker_host`, else DOCKER_HOST, else its default socket."""

    def __init__(self, docker_host: str | None = None) -> None:
        self.url = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST

    @property
    def socket_file(self) -> str | None:
        parts = urlsplit(self.url)
        return parts.path if parts.scheme == "unix" else None

    def connect(self, timeout: float | None = None) -> socket.socket:
        """A new connection to the engine (OSError when it cannot be made)."""
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(parts.path)
            except OSError:
                sock.close()
                raise
            sock.settimeout(None)
            return sock
        if parts.scheme in ("tcp", "http") and parts.hostname in (LOOPBACK, "localhost"):
            sock = socket.create_connection((LOOPBACK, parts.port or 2375), timeout=timeout)
            sock.settimeout(None)
            return sock
        raise OSError(f"DOCKER_HOST={self.url}: the emulator reaches a Docker engine only on a unix socket or loopback")


class _EngineHTTP(http.client.HTTPConnection):
    """http.client over the engine's connection (for creates, whose answer the proxy reads)."""

    def __init__(self, upstream: Upstream) -> None:
        super().__init__("localhost", timeout=300)
        self._upstream = upstream

    def connect(self) -> None:
        self.sock = self._upstream.connect(self.timeout)


@dataclass
class _Head:
    """A request line and its headers, as received."""

    line: bytes
    headers: list[tuple[str, str]]

    @property
    def method(self) -> str:
        return self.line.split(b" ", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        parts = self.line.split(b" ")
        return parts[1].decode("latin-1") if len(parts) > 1 else ""

    def get(self, name: str) -> str:
        return next((value for key, value in self.headers if key.lower() == name), "")

    def encode(self) -> bytes:
        lines = [self.line, *(f"{key}: {value}".encode("latin-1") for key, value in self.headers)]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @property
    def chunked(self) -> bool:
        return "chunked" in self.get("transfer-encoding").lower()

    @property
    def hijacks(self) -> bool:
        """After this request the connection is a raw stream both ways (attach, exec start, a websocket)."""
        return bool(self.get("upgrade")) or ATTACH_PATH.match(self.target) is not None


def _read_head(reader: BufferedReader) -> _Head | None:
    """The next request's head, or None when the client closed the connection."""
    line = reader.readline(_BLOCK)
    while line in (b"\r\n", b"\n"):  # stray line breaks between requests are allowed
        line = reader.readline(_BLOCK)
    if not line:
        return None
    headers: list[tuple[str, str]] = []
    while (field := reader.readline(_BLOCK)) not in (b"\r\n", b"\n", b""):
        key, _, value = field.decode("latin-1").partition(":")
        headers.append((key.strip(), value.strip()))
    return _Head(line.rstrip(b"\r\n"), headers)


def _copy_exactly(reader: BufferedReader, size: int, write: Callable[[bytes], object]) -> None:
    while size > 0:
        block = reader.read(min(size, _BLOCK))
        if not block:
            raise ConnectionError("the client closed the connection mid-body")
        write(block)
        size -= len(block)


def _copy_body(head: _Head, reader: BufferedReader, write: Callable[[bytes], object], dechunk: bool = False) -> None:
    """Pass a request body on as it arrives: chunked as it came (or its data only, `dechunk`), or its
    Content-Length bytes."""
    if not head.chunked:
        _copy_exactly(reader, int(head.get("content-length") or 0), write)
        return
    while True:
        line = reader.readline(_BLOCK)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if not dechunk:
            write(line)
        if size == 0:
            while (trailer := reader.readline(_BLOCK)) not in (b"\r\n", b"\n", b""):
                if not dechunk:
                    write(trailer)
            if not dechunk:
                write(b"\r\n")
            return
        _copy_exactly(reader, size, write)
        crlf = reader.readline(_BLOCK)
        if not dechunk:
            write(crlf)


def _answer(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> bytes:
    """An HTTP/1.1 answer with a JSON body, as the engine sends it."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    reason = _REASONS.get(status) or http.client.responses.get(status, "")
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{key}: {value}" for key, value in headers or []),
             f"Content-Length: {len(body)}"]  # fmt: skip
    if not any(key.lower() == "content-type" for key, _ in headers or []):
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Link:
    """One client connection and, once a request needs it, its own connection to the engine."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.engine: socket.socket | None = None
        self._write = threading.Lock()
        self._pipe: threading.Thread | None = None

    def send(self, data: bytes) -> None:
        with self._write:
            self.client.sendall(data)

    def engine_socket(self, upstream: Upstream) -> socket.socket:
        """The engine connection, made on first use with a thread that relays its bytes back."""
        if self.engine is None:
            self.engine = upstream.connect(timeout=30)
            self._pipe = threading.Thread(target=self._relay_back, args=(self.engine,), daemon=True,
                                          name="emulator-docker-pipe")  # fmt: skip
            self._pipe.start()
        return self.engine

    def _relay_back(self, engine: socket.socket) -> None:
        """Engine -> client, raw, until the engine closes; then the client's connection ends too."""
        try:
            while block := engine.recv(_BLOCK):
                self.send(block)
        except OSError:
            pass
        finally:
            _shutdown(self.client, socket.SHUT_RDWR)

    def finish(self) -> None:
        """The client sent its last byte: tell the engine (a half-close, as hijacked streams need) and
        wait for the rest of its answer to reach the client."""
        if self.engine is not None:
            _shutdown(self.engine, socket.SHUT_WR)
        if self._pipe is not None:
            self._pipe.join()
        if self.engine is not None:
            self.engine.close()

    def cut(self) -> None:
        """End both connections now (the VM is going)."""
        _shutdown(self.client, socket.SHUT_RDWR)
        if self.engine is not None:
            _shutdown(self.engine, socket.SHUT_RDWR)


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


class VmEndpoint:
    """One VM's Docker socket: relays its connections, stamps its creates."""

    def __init__(self, stamp: Stamp, upstream: Upstream) -> None:
        self.stamp = stamp
        self.upstream = upstream
        self._state = threading.Condition()
        self._closed = False
        self._creating = 0
        self._links: set[_Link] = set()

    def serve(self, client: socket.socket) -> None:
        link = _Link(client)
        with self._state:
            if self._closed:
                return
            self._links.add(link)
        try:
            self._converse(link, client.makefile("rb"))
        except OSError:  # either side went away mid-request
            pass
        finally:
            link.finish()
            with self._state:
                self._links.discard(link)

    def _converse(self, link: _Link, reader: BufferedReader) -> None:
        """Requests one after another (HTTP/1.1 keep-alive) until the client closes or the connection is hijacked."""
        while (head := _read_head(reader)) is not None:
            if head.method == "POST" and CREATE_PATH.match(head.target):
                if not self._create(link, head, reader):
                    return
                continue
            try:
                engine = link.engine_socket(self.upstream)
            except OSError as exc:
                link.send(_answer(502, {"message": self._unreachable(exc)}))
                return
            engine.sendall(head.encode())
            _copy_body(head, reader, engine.sendall)
            if head.hijacks:
                while block := reader.read1(_BLOCK):  # what has arrived, without waiting for a full block
                    engine.sendall(block)
                return

    def _create(self, link: _Link, head: _Head, reader: BufferedReader) -> bool:
        """Stamp a container create and carry it out; False when the VM is going (the connection ends)."""
        if head.get("expect").lower() == "100-continue":
            link.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        parts: list[bytes] = []
        _copy_body(head, reader, parts.append, dechunk=True)
        try:
            body = stamp_create(json.loads(b"".join(parts) or b"null"), self.stamp)
        except ValueError as refused:  # Refused, or the body is no JSON
            link.send(_answer(400, {"message": str(refused)}))
            return True
        with self._state:
            if self._closed:
                link.send(_answer(503, {"message": f"the emulated VM {self.stamp.vm} is shutting down"}))
                return False
            self._creating += 1
        try:
            status, headers, reply = self._engine_create(head, json.dumps(body).encode())
        except OSError as exc:
            status, headers, reply = 502, [], json.dumps({"message": self._unreachable(exc)}).encode()
        finally:
            with self._state:
                self._creating -= 1
                self._state.notify_all()
        link.send(_answer(status, reply, headers))
        return True

    def _unreachable(self, exc: OSError) -> str:
        return f"Cannot connect to the Docker daemon at {self.upstream.url}: {exc}"

    def _engine_create(self, head: _Head, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = _EngineHTTP(self.upstream)
        try:
            headers = {key: value for key, value in head.headers if key.lower() not in _HOP_BY_HOP}
            headers["Content-Type"] = "application/json"
            connection.request("POST", head.target, body=body, headers=headers)
            response = connection.getresponse()
            reply = response.read()
            kept = [(key, value) for key, value in response.getheaders() if key.lower() not in _HOP_BY_HOP]
            return response.status, kept, reply
        except http.client.HTTPException as exc:
            raise OSError(str(exc)) from exc
        finally:
            connection.close()

    def close(self, timeout: float = 30) -> None:
        """No new connection or create; creates in flight finish (up to `timeout`); every connection is cut."""
        with self._state:
            self._closed = True
            self._state.wait_for(lambda: self._creating == 0, timeout)
            links = list(self._links)
        for link in links:
            link.cut()


def _serve(conn: socket.socket, address: Any, where: PortContext) -> None:
    endpoint: VmEndpoint = where.context
    endpoint.serve(conn)


class DockerEndpoints:
    """Every VM's Docker socket: `open()` gives a VM its own, `close()` takes it away (one accept thread)."""

    def __init__(self, folder: Path, emulator_id: str, docker_host: str | None = None) -> None:
        self.upstream = Upstream(docker_host)
        self.emulator_id = emulator_id
        #: a short folder of our own when `folder` is too deep for socket paths (the emulator's watchdog deletes it)
        self.temporary_folder: Path | None = None
        if len(str(folder)) + len("/12345678901234567890.sock") > _SOCKET_PATH_MAX:
            folder = self.temporary_folder = Path(tempfile.mkdtemp(prefix="pe-docker-"))
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._mode, self._group = self._permissions()
        self._lock = threading.Lock()
        self._endpoints: dict[str, VmEndpoint] = {}
        self._mux = PortMux(_serve, name="emulator-docker")

    def _permissions(self) -> tuple[int, int | None]:
        """The engine socket's own mode and group (who may use Docker here may use a VM's); else 0600."""
        engine = self.upstream.socket_file
        try:
            info = os.stat(engine) if engine else None
        except OSError:
            info = None
        if info is None or not stat.S_ISSOCK(info.st_mode):
            return 0o600, None
        return stat.S_IMODE(info.st_mode), info.st_gid

    def open(self, key: str, vm: str, metadata_host: str) -> str:
        """A new socket file for a VM (`key`: unique and short, its instance id); its path."""
        path = self.folder / f"{key}.sock"
        stamp = Stamp(vm, self.emulator_id, metadata_host, str(path), self.upstream.socket_file)
        endpoint = VmEndpoint(stamp, self.upstream)
        try:
            self._mux.open_unix(path, endpoint, self._mode, self._group)
        except PermissionError:  # the engine socket's group is not one of ours
            self._mux.open_unix(path, endpoint)
        with self._lock:
            self._endpoints[str(path)] = endpoint
        return str(path)

    def close(self, path: str) -> None:
        """The VM is going: its socket file disappears, creates in flight finish, its connections end."""
        self._mux.close(path)
        with self._lock:
            endpoint = self._endpoints.pop(path, None)
        if endpoint is not None:
            endpoint.close()

    def stop(self) -> None:
        with self._lock:
            paths = list(self._endpoints)
        for path in paths:
            self.close(path)
        self._mux.stop()
        if self.temporary_folder is not None:
            shutil.rmtree(self.temporary_folder, ignore_errors=True)
