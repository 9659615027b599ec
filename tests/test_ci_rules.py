"""tests/conftest.py's rules, run for real: a pytest session in a subprocess on a tiny test file
with this conftest, against no engine, or a stand-in engine on a unix socket that answers the
docker SDK's `/version` and `/_ping` (optionally busy for its first requests)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

TINY_TESTS = '''
import pytest

@pytest.mark.docker
def test_needs_an_engine(docker_engine):
    assert docker_engine.ping()

def test_plain():
    pass
'''


class StandInEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers like a Docker engine that is busy (503) for its first `busy_for` requests."""

    daemon_threads = True

    def __init__(self, path: Path, busy_for: int) -> None:
        self.busy_for = busy_for
        self.requests_seen = 0
        self.lock = threading.Lock()
        super().__init__(str(path), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInEngine

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        with self.server.lock:
            self.server.requests_seen += 1
            busy = self.server.requests_seen <= self.server.busy_for
        if busy:
            self._answer(503, b'{"message": "busy"}', "application/json")
        elif self.path.endswith("/version"):
            self._answer(200, json.dumps({"ApiVersion": "1.41", "Version": "20.10.24"}).encode(), "application/json")
        elif self.path.endswith("/_ping"):
            self._answer(200, b"OK", "text/plain")
        else:
            self._answer(404, b'{"message": "not here"}', "application/json")

    def _answer(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def session_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "session"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", folder / "conftest.py")
    (folder / "test_tiny.py").write_text(TINY_TESTS)
    return folder


def stand_in_engine(tmp_path: Path, busy_for: int) -> Iterator[StandInEngine]:
    server = StandInEngine(tmp_path / "engine.sock", busy_for)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[StandInEngine]:
    yield from stand_in_engine(tmp_path, busy_for=0)


@pytest.fixture()
def busy_engine(tmp_path: Path) -> Iterator[StandInEngine]:
    yield from stand_in_engine(tmp_path, busy_for=3)


def session(folder: Path, docker_host: str, ci: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["DOCKER_HOST"] = docker_host
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # installed plugins (hypothesis) cost seconds per session
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
        cwd=folder, env=env, capture_output=True, text=True, timeout=180,
    )


def no_engine(folder: Path) -> str:
    return f"unix://{folder}/no-engine.sock"


@pytest.mark.parametrize("ci", ["true", "1", "Yes"])
def test_in_ci_a_skipped_docker_test_fails_the_session(session_dir: Path, ci: str) -> None:
    done = session(session_dir, no_engine(session_dir), ci)
    assert done.returncode == 1, done.stdout
    assert "1 passed, 1 skipped" in done.stdout
    assert "DOCKER TESTS SKIPPED: no Docker engine answers" in done.stdout
    assert f"CI={ci}: 1 test(s) marked docker were skipped: this session FAILS" in done.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_skipped_docker_test_is_only_a_loud_banner(session_dir: Path, ci: str | None) -> None:
    done = session(session_dir, no_engine(session_dir), ci)
    assert done.returncode == 0, done.stdout
    assert "1 test(s) marked docker were skipped:" in done.stdout
    assert "FAILS" not in done.stdout


def test_in_ci_deselecting_the_docker_tests_fails_the_session(session_dir: Path, engine: StandInEngine) -> None:
    done = session(session_dir, f"unix://{engine.server_address}", "true", "-m", "not docker")
    assert done.returncode == 1, done.stdout
    assert "1 passed, 1 deselected" in done.stdout
    assert "no test marked docker passed" in done.stdout


def test_in_ci_a_session_whose_docker_tests_pass_passes(session_dir: Path, engine: StandInEngine) -> None:
    done = session(session_dir, f"unix://{engine.server_address}", "true")
    assert done.returncode == 0, done.stdout
    assert "2 passed" in done.stdout and "!!!!" not in done.stdout


def test_a_busy_engine_that_misses_the_first_pings_is_waited_for_not_skipped(
    session_dir: Path, busy_engine: StandInEngine
) -> None:
    done = session(session_dir, f"unix://{busy_engine.server_address}", None)
    assert done.returncode == 0, done.stdout
    assert "2 passed" in done.stdout and "skipped" not in done.stdout
    assert busy_engine.requests_seen > busy_engine.busy_for  # it was asked again after refusing


def test_commands_that_need_the_engine_wait_for_a_busy_one_where_auto_probes_once(
    busy_engine: StandInEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parallel_engine.runtimes.docker import ENGINE_WAIT_S, engine_available

    monkeypatch.setenv("DOCKER_HOST", f"unix://{busy_engine.server_address}")
    assert engine_available() is False  # one probe: RUNTIME auto falls back to process at once
    assert busy_engine.requests_seen <= busy_engine.busy_for
    assert engine_available(wait_s=ENGINE_WAIT_S) is True  # build, RUNTIME docker, down wait for it
    assert busy_engine.requests_seen > busy_engine.busy_for


TINY_BROWSER_TEST = '''
import pytest

@pytest.mark.browser
def test_needs_a_browser(chromium):
    assert chromium
'''


@pytest.mark.parametrize("ci", ["true", None])
def test_a_skipped_browser_test_is_a_loud_banner_and_fails_the_session_only_in_ci(
    session_dir: Path, engine: StandInEngine, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    (session_dir / "test_browser_tiny.py").write_text(TINY_BROWSER_TEST)
    monkeypatch.setenv("PE_CHROMIUM", "pe-test-no-chromium")  # not installed anywhere
    done = session(session_dir, f"unix://{engine.server_address}", ci)
    assert "2 passed, 1 skipped" in done.stdout
    assert "1 test(s) marked browser were skipped:" in done.stdout and "BROWSER TESTS SKIPPED" in done.stdout
    if ci:
        assert done.returncode == 1, done.stdout
        assert "CI=true: 1 test(s) marked browser were skipped: this session FAILS" in done.stdout
    else:
        assert done.returncode == 0, done.stdout
        assert "FAILS" not in done.stdout
