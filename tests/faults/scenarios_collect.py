"""Fault scenarios for `collect` (tests/faults/harness.py): a symlink zoo in outputs that a task keeps
changing while collect reads it, Ctrl-C/SIGTERM at a random moment, hostile object names in a bucket.

Each asserts: collect ends within a bound, its exit code, nothing written outside --dest, no
half-written file (every collected file is whole: one of the versions its task wrote), no
staging folder left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from parallel_engine.model import AttemptState
from parallel_engine.store import local_store
from tests.collect_helpers import RUN_ID, finished_run, outputs_dir, staging_left
from tests.faults.harness import scenario
from tests.helpers import cli_env
from tests.hostile import SEGMENTS

BOUND_S = 60.0
SECRET = b"secret-never-collected-7d1f"


def _collect_cmd(store: Path, dest: Path) -> list[str]:
    return [sys.executable, "-m", "parallel_engine", "collect", RUN_ID, "--dest", str(dest), "--store", str(store)]


def _start(store: Path, dest: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(_collect_cmd(store, dest), env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _ended(proc: subprocess.Popen[str], after: str) -> str:
    """Its stderr once it ended, within BOUND_S (else it is killed and that is the failure)."""
    try:
        return proc.communicate(timeout=BOUND_S)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"collect did not end within {BOUND_S} s {after}") from None


def _outside(root: Path, skip: tuple[Path, ...]) -> dict[str, bytes | str]:
    """Everything under `root` except `skip`, never following a link: what must not change."""
    seen: dict[str, bytes | str] = {}
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        for name in dirs + names:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            seen[rel] = ("link:" + os.readlink(path) if path.is_symlink() else
                         path.read_bytes() if path.is_file() else "folder" if path.is_dir() else "special")
    return seen


def _collected(folder: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(dirpath, name)
            assert path.is_file() and not path.is_symlink(), f"{path} is not a regular file"
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def _zoo(out: Path, outside: Path) -> None:
    """Every kind of entry collect must not follow or read."""
    (out / "absolute").symlink_to(outside / "secret.txt")
    (out / "climbs").symlink_to("../../../../run.json")
    (out / "zero").symlink_to("/dev/zero")
    (out / "dangling").symlink_to("/nonexistent/file")
    (out / "loop").symlink_to("loop")
    (out / "folder-link").symlink_to(outside)
    os.mkfifo(out / "fifo")


def _files(out: Path, rng: random.Random, count: int) -> dict[str, list[bytes]]:
    """`count` regular files in nested folders; each path -> the versions it may hold."""
    versions: dict[str, list[bytes]] = {}
    for index in range(count):
        rel = f"d{index % 7}/e{index % 3}/f{index}.bin"
        data = rng.randbytes(rng.randrange(0, 3000)) + f"#{index}".encode()
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        versions[rel] = [data]
    return versions


def _mutate(out: Path, outside: Path, versions: dict[str, list[bytes]], rng: random.Random,
            stop: threading.Event) -> None:
    """The task is still writing: files replaced whole, swapped for links or fifos, folders swapped
    for links out of the folder, entries removed, at random moments."""
    paths = sorted(versions)
    while not stop.is_set():
        rel = rng.choice(paths)
        path = out / rel
        action = rng.randrange(5)
        if any((out / rel).parents[i].is_symlink() for i in range(rel.count("/"))):
            continue  # its folder is a link out by now: the task writes only inside its folder
        try:
            if action == 0:  # a new version, written whole (temporary + rename)
                data = rng.randbytes(rng.randrange(0, 3000)) + b"#new"
                versions[rel].append(data)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            elif action == 1:  # a file becomes a link to the secret
                tmp = path.with_name(path.name + ".lnk")
                tmp.symlink_to(outside / "secret.txt")
                os.replace(tmp, path)
            elif action == 2:  # a folder becomes a link out of the folder
                folder = path.parent
                if not folder.is_symlink() and folder.is_dir():
                    os.rename(folder, folder.with_name(folder.name + "-moved"))
                    folder.symlink_to(outside)
            elif action == 3:
                path.unlink()
            else:
                tmp = path.with_name(path.name + ".fifo")
                os.mkfifo(tmp)
                os.replace(tmp, path)
        except OSError:
            pass  # already swapped or gone: the next moment picks again
        time.sleep(rng.uniform(0, 0.004))


def _check_whole(dest: Path, versions: dict[str, list[bytes]]) -> None:
    for rel, data in _collected(dest / "a").items():
        base = rel.replace("-moved/", "/")
        assert base in versions, f"{rel} was never a regular file of the task"
        assert data in versions[base], f"{rel} holds bytes the task never wrote whole ({len(data)} bytes)"
        assert SECRET not in data


def _setup(tmp: Path, rng: random.Random, count: int) -> tuple[Path, Path, dict[str, list[bytes]]]:
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    store_root = tmp / "store"
    finished_run(local_store(store_root), {"a": AttemptState.SUCCEEDED, "b": AttemptState.SUCCEEDED})
    out = outputs_dir(store_root, RUN_ID, "a")
    versions = _files(out, rng, count)
    _zoo(out, outside)
    (outputs_dir(store_root, RUN_ID, "b") / "b.txt").write_bytes(b"b")
    return store_root, out, versions


@scenario("collect: symlink zoo in outputs, changed while collecting", ci_tries=3)
def symlink_zoo_while_collecting(rng: random.Random, tmp: Path) -> None:
    store_root, out, versions = _setup(tmp, rng, rng.randrange(50, 400))
    dest = tmp / "dest"
    before = _outside(tmp, (store_root, dest))
    stop = threading.Event()
    proc = _start(store_root, dest)
    time.sleep(rng.uniform(0.0, 1.0))  # the CLI's start, then the listing, then the copies
    mutator = threading.Thread(target=_mutate, args=(out, tmp / "outside", versions, rng, stop))
    mutator.start()
    started = time.monotonic()
    try:
        stderr = _ended(proc, "while its outputs changed")
    finally:
        stop.set()
        mutator.join()
    assert proc.returncode == 0, f"exit {proc.returncode}: {stderr[-2000:]}"
    assert "Traceback" not in stderr
    assert time.monotonic() - started < BOUND_S
    assert _outside(tmp, (store_root, dest)) == before, "something outside --dest changed"
    _check_whole(dest, versions)
    assert (dest / "b" / "b.txt").read_bytes() == b"b"
    assert (dest / "results.csv").is_file()
    assert staging_left(dest) == []


@scenario("collect: ctrl-c or sigterm at random", ci_tries=2)  # ~5 s a try
def interrupted_at_random(rng: random.Random, tmp: Path) -> None:
    store_root, _, versions = _setup(tmp, rng, rng.randrange(800, 1500))
    dest = tmp / "dest"
    started = time.monotonic()
    first = subprocess.run(_collect_cmd(store_root, dest), env=cli_env(), capture_output=True, text=True,
                           timeout=BOUND_S)
    assert first.returncode == 0, first.stderr
    took = time.monotonic() - started  # the moments to draw from: the copy, the switch, the cleanup
    before = _outside(tmp, (store_root, dest))
    sig = rng.choice((signal.SIGINT, signal.SIGTERM))
    proc = _start(store_root, dest)
    deadline = time.monotonic() + BOUND_S
    while not staging_left(dest) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # the collect has begun writing
    time.sleep(rng.uniform(0.0, took / 2))  # about as long as the whole collect after the CLI's start
    proc.send_signal(sig)
    stderr = _ended(proc, f"of {sig.name}")
    assert proc.returncode in (0, 130), f"exit {proc.returncode} after {sig.name}: {stderr[-2000:]}"
    assert "Traceback" not in stderr
    assert staging_left(dest) == [], f"staging left after {sig.name}"
    assert _outside(tmp, (store_root, dest)) == before, "something outside --dest changed"
    _check_whole(dest, versions)
    if (dest / "a").exists():  # moved in whole, or not at all
        assert len(_collected(dest / "a")) == len(versions), "a half-moved task folder"
    if proc.returncode == 0:
        assert (dest / "a").is_dir() and (dest / "b" / "b.txt").read_bytes() == b"b"
    again = subprocess.run(_collect_cmd(store_root, dest), env=cli_env(), capture_output=True, text=True,
                           timeout=BOUND_S)
    assert again.returncode == 0, f"collect after the interrupted one: {again.stderr[-2000:]}"
    assert len(_collected(dest / "a")) == len(versions)




@scenario("collect: hostile object names in a bucket", ci_tries=2, marks=("emulator",))
def hostile_object_names(rng: random.Random, tmp: Path) -> None:
    from parallel_engine.api import open_store
    from parallel_engine.config import load_config
    from parallel_engine.emulator import Emulator
    from parallel_engine.emulator.serve import config_values, render_config
    from parallel_engine.paths import parts_of
    from parallel_engine.store import RunStore

    names = {"/".join(rng.choice(SEGMENTS) for _ in range(rng.randrange(1, 7))) for _ in range(12)}
    names = {n for n in names if n not in (".", "..") and "\n" not in n}
    names |= {"ok/fine.txt"}
    with Emulator(time_scale=0.01) as cloud:
        (tmp / ".config.yaml").write_text(render_config(config_values(cloud)))
        store = open_store(load_config(tmp / ".config.yaml", environ={}))
        finished_run(store, {"a": AttemptState.SUCCEEDED})  # writes through the bucket's own client
        prefix = RunStore.attempt_prefix(RUN_ID, "a", 1) + "outputs/"
        fits = [n for n in sorted(names) if len(f"{store.blobs.prefix}{prefix}{n}".encode()) <= 1024]  # type: ignore[attr-defined]
        contents = {name: rng.randbytes(rng.randrange(0, 200)) for name in fits}  # Storage's limit: 1,024 bytes
        for name, data in contents.items():
            store.blobs.write(prefix + name, data)
        dest = tmp / "box" / "one" / "two" / "dest"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "parallel_engine", "collect", RUN_ID, "--dest", str(dest)],
                              cwd=tmp, env=cli_env(), capture_output=True, text=True, timeout=BOUND_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - started < BOUND_S
    written = {str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir() and dest not in p.parents}
    assert written == {".config.yaml"}, f"written outside --dest: {written - {'.config.yaml'}}"
    collected = _collected(dest / "a")
    safe = {n for n in contents if parts_of(n) is not None and all(len(p.encode()) <= 255 for p in n.split("/"))}
    folders = {"/".join(n.split("/")[:i]) for n in safe for i in range(1, n.count("/") + 1)}
    for name, data in contents.items():
        if name in safe and name not in folders:
            assert collected.get(name) == data, f"{name!r} not collected byte-exact"
        else:
            assert name not in collected
    assert staging_left(dest) == []
