"""Many listening sockets (loopback ports, Unix socket files) served by one accept thread.

Each VM gets its own metadata port (so `GCE_METADATA_HOST` is a plain host:port, as on Google) and
its own Docker socket file, but a thousand VMs should not mean a thousand idle server threads: one
selector accepts on all of them and hands each connection, with the context of the socket it
arrived on, to a thread of its own.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallel_engine.emulator.netutil import LOOPBACK


@dataclass(frozen=True)
class PortContext:
    """Where a connection arrived (a port, or a socket file's path) and the object registered with it."""

    address: int | str
    context: Any


#: What serves one accepted connection: (connection, peer address, the listener's context).
Serve = Callable[[socket.socket, Any, PortContext], object]


@dataclass(frozen=True)
class _Listener:
    sock: socket.socket
    where: PortContext


class PortMux:
    def __init__(self, serve: Serve, name: str = "emulator-portmux") -> None:
        self._serve_one = serve
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._listeners: dict[int | str, _Listener] = {}
        self._stopped = False
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def open(self, context: Any) -> int:
        """Listen on a new loopback port whose connections are served with `context`; the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))
        port = int(sock.getsockname()[1])
        self._listen(sock, PortContext(port, context))
        return port

    def open_unix(self, path: Path, context: Any, mode: int = 0o600, group: int | None = None) -> None:
        """Listen on a new Unix socket file at `path` (replacing a stale one) with `mode` and `group`.

        Permissions are set before `listen()`: until then nobody can connect, whatever they were.
        """
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, mode)
            if group is not None:
                os.chown(path, -1, group)
        except OSError:
            sock.close()
            raise
        self._listen(sock, PortContext(str(path), context))

    def _listen(self, sock: socket.socket, where: PortContext) -> None:
        sock.listen(64)
        sock.setblocking(False)
        with self._lock:
            self._listeners[where.address] = _Listener(sock, where)
            self._selector.register(sock, selectors.EVENT_READ, self._listeners[where.address])
        self._wakeup_w.send(b"x")

    def close(self, address: int | str) -> None:
        """Stop listening on a port or socket file (a file is removed); connections already accepted go on."""
        with self._lock:
            listener = self._listeners.pop(address, None)
            if listener is None:
                return
            self._selector.unregister(listener.sock)
            listener.sock.close()
        if isinstance(address, str):
            Path(address).unlink(missing_ok=True)

    def _loop(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select(timeout=0.5):
                listener: _Listener | None = key.data
                if listener is None:
                    self._wakeup_r.recv(4096)
                    continue
                try:
                    conn, address = listener.sock.accept()
                except OSError:  # BlockingIOError (another accept took it), or closed meanwhile
                    continue
                conn.setblocking(True)
                threading.Thread(target=self._serve, args=(conn, address, listener.where), daemon=True).start()

    def _serve(self, conn: socket.socket, address: Any, where: PortContext) -> None:
        try:
            self._serve_one(conn, address, where)
        except Exception:  # noqa: BLE001 - a client that hung up mid-request
            pass
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def stop(self) -> None:
        self._stopped = True
        self._wakeup_w.send(b"x")
        self._thread.join(timeout=5)
        with self._lock:
            addresses = list(self._listeners)
        for address in addresses:
            self.close(address)
        self._selector.close()
        self._wakeup_r.close()
        self._wakeup_w.close()
