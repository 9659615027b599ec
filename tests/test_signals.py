"""SIGINT/SIGTERM to a real `parallel-engine run`: every task's process tree dies, the store stays consistent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import parallel_engine as pe
from parallel_engine import api
from parallel_engine.errors import EXIT_INTERRUPTED, Interrupted
from tests.helpers import wait_for, write_probe


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_cancels_running_tasks_kills_their_trees_and_exits_130(tmp_path: Path, sig: signal.Signals) -> None:
    write_probe(tmp_path)
    # 4 tasks, 2 at a time: two run (each with a child), two are still queued when the signal lands.
    (tmp_path / "params.csv").write_text("sleep\n300\n300\n300\n300\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_engine", "run", "params.csv", "-j", "2",
         "--command", f"{sys.executable} {tmp_path / 'probe.py'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    runs = tmp_path / ".parallel-engine" / "runs"
    pid_files = lambda: list(runs.glob("*/tasks/*/*/outputs/pids")) if runs.exists() else []  # noqa: E731
    wait_for(lambda: len(pid_files()) == 2 and all(p.read_text().strip() for p in pid_files()), 30, "two running tasks")
    task_pids = [int(pid) for path in pid_files() for pid in path.read_text().split()]
    assert len(task_pids) == 4 and all(psutil.pid_exists(pid) for pid in task_pids)

    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    for pid in task_pids:
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, f"task process {pid} survived the {sig.name}"
    (run_dir,) = runs.iterdir()
    assert json.loads((run_dir / "end.json").read_text())["state"] == "cancelled"
    states = sorted(json.loads(p.read_text())["state"] for p in run_dir.glob("tasks/*/*/status.json"))
    assert states == ["cancelled", "cancelled"]  # the queued two never started
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())  # nothing half-written
    status = subprocess.run(
        [sys.executable, "-m", "parallel_engine", "status", run_dir.name, "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert json.loads(status.stdout)["counts"] == {"cancelled": 4}


def test_run_whose_orchestrator_died_is_interrupted_and_its_running_attempts_lost(tmp_path: Path) -> None:
    write_probe(tmp_path)
    (tmp_path / "params.csv").write_text("sleep\n300\n300\n")  # one runs, one waits (-j 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_engine", "run", "params.csv", "-j", "1", "-q",
         "--command", f"{sys.executable} {tmp_path / 'probe.py'}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    runs = tmp_path / ".parallel-engine" / "runs"
    pid_files = lambda: list(runs.glob("*/tasks/*/*/outputs/pids")) if runs.exists() else []  # noqa: E731
    wait_for(lambda: len(pid_files()) == 1 and pid_files()[0].read_text().strip(), 30, "a running task")
    task_pids = [int(pid) for pid in pid_files()[0].read_text().split()]
    try:
        proc.kill()  # SIGKILL: no handler runs, no end.json is written
        proc.wait(30)
        (run_dir,) = runs.iterdir()
        assert not (run_dir / "end.json").exists()
        status = subprocess.run(
            [sys.executable, "-m", "parallel_engine", "status", run_dir.name, "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True,
        )
        shown = json.loads(status.stdout)
        assert shown["state"] == "interrupted"
        by_state = sorted((t["state"], t["attempts"], t["reason"]) for t in shown["tasks"])
        assert by_state == [("cancelled", 0, ""), ("cancelled", 1, f"its orchestrator (pid {proc.pid}) is gone")]
    finally:
        for pid in task_pids:  # its own session: the task outlives a SIGKILLed orchestrator
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_cancel_before_the_run_exists_creates_no_run_and_is_interrupted(tmp_path: Path) -> None:
    (tmp_path / "tasks.txt").write_text("true\n")
    cancel = threading.Event()
    cancel.set()  # e.g. Ctrl-C while the task file was read
    with pytest.raises(Interrupted) as raised:
        pe.run(str(tmp_path / "tasks.txt"), store=str(tmp_path / "store"), cancel=cancel)
    assert raised.value.exit_code == EXIT_INTERRUPTED
    assert not (tmp_path / "store" / "runs").exists()


class SignalledInsideSet(threading.Event):
    """An Event whose set() is interrupted by a second signal while it holds its lock, as Python
    runs a handler between any two bytecodes (a loaded machine widens that window to ms)."""

    def __init__(self) -> None:
        super().__init__()
        self.second: Callable[[], None] = lambda: None

    def set(self) -> None:
        with self._cond:
            second, self.second = self.second, lambda: None
            second()  # the second signal's handler runs here, inside the first's set()
            self._flag = True
            self._cond.notify_all()


def test_a_second_signal_while_the_first_is_being_handled_does_not_deadlock() -> None:
    cancel = SignalledInsideSet()
    handler = api.cancel_handler(cancel)
    cancel.second = lambda: handler(signal.SIGINT, None)
    worker = threading.Thread(target=handler, args=(signal.SIGTERM, None), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the nested handler waits for the lock its own signal's handler holds"
    assert cancel.is_set()


def _cli_with(tmp_path: Path, prelude: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`parallel-engine ARGV` in a new Python process that first runs `prelude` (a fault's hook)."""
    script = f"import os, signal, sys\n{prelude}\nsys.argv = {['parallel-engine', *argv]!r}\n" \
             "import runpy\nrunpy.run_module('parallel_engine', run_name='__main__')\n"  # as `python -m parallel_engine`
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def _collect_with(tmp_path: Path, prelude: str) -> subprocess.CompletedProcess[str]:
    """`collect` of a finished run of one task (its output a.txt) into tmp_path/dest."""
    from parallel_engine.model import AttemptState
    from parallel_engine.store import local_store
    from tests.collect_helpers import RUN_ID, finished_run, outputs_dir

    store_root = tmp_path / "store"
    finished_run(local_store(store_root), {"a": AttemptState.SUCCEEDED})
    (outputs_dir(store_root, RUN_ID, "a") / "a.txt").write_bytes(b"a")
    return _cli_with(tmp_path, prelude, "collect", RUN_ID, "--dest", "dest", "--store", str(store_root))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_as_the_process_exits_after_a_finished_command_changes_nothing(tmp_path: Path,
                                                                                sig: signal.Signals) -> None:
    """A collect that said "collected" exits 0 even when Ctrl-C lands as Python shuts down (the
    fault loop's exit -2: Python had put the default handler back, which killed it without a word).
    The signal is sent by an atexit callback: the last Python code the process runs."""
    done = _collect_with(tmp_path, f"import atexit\natexit.register(lambda: os.kill(os.getpid(), signal.{sig.name}))")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "collected 1 task outputs" in done.stdout
    assert (tmp_path / "dest" / "a" / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_collect_finished_copying_does_not_report_it_interrupted(tmp_path: Path,
                                                                               sig: signal.Signals) -> None:
    """The collection is whole once collect_run returned: a signal while the command prints its
    summary is ignored (exit 0, "collected"), not an interrupt over a finished collection."""
    done = _collect_with(tmp_path, "from parallel_engine.collect import Collected\n"
                                   "warnings = Collected.warnings\n"
                                   f"def signalled(self, dest):\n    os.kill(os.getpid(), signal.{sig.name})\n"
                                   "    return warnings(self, dest)\n"
                                   "Collected.warnings = signalled")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "collected 1 task outputs" in done.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_a_command_without_its_own_handling_exits_130_with_one_line(tmp_path: Path,
                                                                                sig: signal.Signals) -> None:
    """`down` (like status, build, ...) interrupted: exit 130 as README's table says, and a line
    saying so, whichever typer is installed (older ones print "Aborted!" and exit 1); SIGTERM
    too (it killed the process: -15)."""
    done = _cli_with(tmp_path, "from parallel_engine import api\n"
                               f"def down(*args, **kwargs):\n    os.kill(os.getpid(), signal.{sig.name})\n    return []\n"
                               "api.down = down", "down", "some-run")
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stderr == "interrupted: `parallel-engine down` stopped before it finished\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_command_loads_ends_it_with_one_line_and_exit_130(tmp_path: Path,
                                                                             sig: signal.Signals) -> None:
    """In the ~0.3 s Python takes to load typer and rich (the seeded gce signal test, 2 of 80
    tries): not a KeyboardInterrupt traceback (exit -2) or a silent kill (-15). The signal is
    sent as typer is imported."""
    done = _cli_with(tmp_path, "import importlib.abc\n"
                               "class Typer(importlib.abc.MetaPathFinder):\n"
                               "    def find_spec(self, name, path, target=None):\n"
                               f"        if name == 'typer': os.kill(os.getpid(), signal.{sig.name})\n"
                               "sys.meta_path.insert(0, Typer())", "status", "some-run")
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stderr == "interrupted: parallel-engine stopped as it started; nothing was done\n"
