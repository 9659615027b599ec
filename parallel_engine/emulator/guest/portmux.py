"""Many loopback listening ports served by one accept thread.

Each VM gets its own metadata port (so `GCE_METADATA_HOST` is a plain host:port, as on Google), but
a thousand VMs should not mean a thousand idle server threads: one selector accepts on all of them
and hands each connection, with the context of the port it arrived on, to a handler thread.
"""

from __future__ import annotations

import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from parallel_engine.emulator.netutil import LOOPBACK


class PortContext:
    """What a handler sees as `self.server`: the object registered with the port."""

    def __init__(self, port: int, context: Any) -> None:
        self.port = port
        self.context = context


class PortMux:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._handler = handler
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._sockets: dict[int, socket.socket] = {}
        self._stopped = False
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="emulator-metadata", daemon=True)
        self._thread.start()

    def open(self, context: Any) -> int:
        """Listen on a new loopback port whose connections are served with `context`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))
        sock.listen(64)
        sock.setblocking(False)
        port = int(sock.getsockname()[1])
        with self._lock:
            self._sockets[port] = sock
            self._selector.register(sock, selectors.EVENT_READ, PortContext(port, context))
        self._wakeup_w.send(b"x")
        return port

    def close(self, port: int) -> None:
        with self._lock:
            sock = self._sockets.pop(port, None)
            if sock is not None:
                self._selector.unregister(sock)
                sock.close()

    def _loop(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select(timeout=0.5):
                if key.data is None:
                    self._wakeup_r.recv(4096)
                    continue
                try:
                    conn, address = key.fileobj.accept()  # type: ignore[union-attr]
                except (BlockingIOError, OSError):
                    continue
                conn.setblocking(True)
                threading.Thread(target=self._serve, args=(conn, address, key.data), daemon=True).start()

    def _serve(self, conn: socket.socket, address: Any, context: PortContext) -> None:
        try:
            self._handler(conn, address, context)  # type: ignore[arg-type]
        except Exception:  # a client that hung up mid-request
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
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()
        self._selector.close()
        self._wakeup_r.close()
        self._wakeup_w.close()
