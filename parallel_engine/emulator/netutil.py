"""Loopback-only networking helpers: every emulated service lives on 127.0.0.1."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port free on the loopback address right now (for servers we do not bind ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0, alive: Callable[[], bool] | None = None) -> None:
    """Poll `url` until it answers anything at all; raise TimeoutError otherwise.

    `alive` lets the caller stop waiting as soon as the process behind the URL died.
    """
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"refusing to poll a non-loopback URL: {url}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server behind {url} exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
