"""runtimes/spawn.py: posix_spawnp with the GIL released, and the same contract as os.posix_spawnp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parallel_engine.runtimes import spawn as spawn_module
from parallel_engine.runtimes.spawn import env_entries, spawn

def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(spawn_module._LIBC is None, reason="no glibc here: os.posix_spawnp (GIL held) is used")
def test_other_threads_run_while_a_child_is_being_spawned(tmp_path: Path) -> None:
    # The child's first file action opens a FIFO for reading, which blocks until somebody opens
    # it for writing; with vfork the parent waits in posix_spawnp meanwhile. Only another Python
    # thread of the parent can open the writing end, so this finishes only if the spawning thread
    # let go of the GIL (os.posix_spawnp holds it: this program hangs, and the timeout fails it).
    program = textwrap.dedent(f"""
        import os, threading
        from parallel_engine.runtimes.spawn import env_entries, spawn
        fifo = {str(tmp_path / "fifo")!r}
        os.mkfifo(fifo)
        result = {{}}
        def start():
            result["pid"] = spawn(["true"], env_entries(os.environ), [(0, fifo, os.O_RDONLY, 0)])
        spawner = threading.Thread(target=start)
        spawner.start()
        writer = os.open(fifo, os.O_WRONLY)  # needs the GIL while the spawner is inside spawn()
        spawner.join()
        os.close(writer)
        print(os.waitstatus_to_exitcode(os.waitpid(result["pid"], 0)[1]))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_child_gets_exactly_the_environment_and_argv_given(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, "-c", "import json, os, sys; print(json.dumps([sys.argv[1:], dict(os.environ)]))",
            "-x", "it's $(x) `y` ;\n ünï"]
    env = {"ONLY": "this", "ALSO": "a=b"}
    pid = spawn(argv, env_entries(env), [(1, str(out), os.O_WRONLY | os.O_CREAT, 0o644)])
    assert _wait(pid) == 0
    got_argv, got_env = json.loads(out.read_text())
    assert got_argv == argv[3:]
    assert {key: got_env[key] for key in env} == env
    assert set(got_env) - set(env) <= {"LC_CTYPE"}  # Python may add LC_CTYPE itself (PEP 538)


def test_a_program_that_does_not_exist_is_file_not_found_naming_it() -> None:
    with pytest.raises(FileNotFoundError) as caught:
        spawn(["no-such-program-anywhere"], env_entries({"PATH": os.environ["PATH"]}), [])
    assert caught.value.filename == "no-such-program-anywhere"


@pytest.mark.parametrize("where", ["argv", "env", "path"])
def test_a_nul_byte_anywhere_is_refused_before_anything_starts(tmp_path: Path, where: str) -> None:
    argv = ["true", "a\0b"] if where == "argv" else ["true"]
    env = [b"A=1\0B=2"] if where == "env" else env_entries(os.environ)
    opens = [(1, str(tmp_path / "a\0b"), os.O_WRONLY | os.O_CREAT, 0o644)] if where == "path" else []
    with pytest.raises(ValueError, match="null byte"):
        spawn(argv, env, opens)
    assert list(tmp_path.iterdir()) == []


def test_a_log_file_that_cannot_be_opened_is_an_os_error_not_a_child(tmp_path: Path) -> None:
    missing = tmp_path / "no-folder" / "stdout.log"
    with pytest.raises(OSError):
        spawn(["true"], env_entries(os.environ), [(1, str(missing), os.O_WRONLY | os.O_CREAT, 0o644)])
