"""Property tests for `collect` (hypothesis): whatever a task leaves in its outputs, or a bucket holds
under a run, collect ends without a traceback, writes nothing outside --dest, copies every regular
file byte-exact, and lists (never follows) everything else."""

from __future__ import annotations

import csv
import os
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallel_engine.collect import printable
from parallel_engine.model import AttemptState
from parallel_engine.paths import parts_of
from parallel_engine.store import local_store
from tests.collect_helpers import RUN_ID, finished_run, memory_store, outputs_dir, outputs_key, staging_left

SECRET = b"never-copied-0a5c1e"
SETTINGS = settings(max_examples=int(os.environ.get("PE_HYPOTHESIS_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

_text_names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=30)
_byte_names = st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b"\0" not in b).map(os.fsdecode)
_long_names = st.integers(200, 255).map(lambda n: "L" * n)
NAMES = st.one_of(_text_names, _byte_names, _long_names).filter(
    lambda name: name not in (".", "..") and len(os.fsencode(name)) <= 255)
LINKS = ("secret", "secret-folder", "climbs", "zero", "dangling", "loop", "sibling")
ENTRY = st.tuples(
    st.lists(NAMES, min_size=1, max_size=3),
    st.sampled_from(("file", "file", "file", "link", "fifo", "folder")),
    st.binary(max_size=2048),
    st.sampled_from(LINKS),
)


def _make(out: Path, outside: Path, entries: list[tuple[list[str], str, bytes, str]]) -> tuple[dict[str, bytes], set[str]]:
    """Create `entries` under `out` (skipping one whose parent is not a folder); returns the regular
    files by path and the paths of everything else that is not a folder."""
    files: dict[str, bytes] = {}
    others: set[str] = set()
    made: list[str] = []
    for parts, kind, data, link in entries:
        path = out.joinpath(*parts)
        rel = "/".join(parts)
        ancestors = [out.joinpath(*parts[:i]) for i in range(1, len(parts))]
        if any(a.is_symlink() or (os.path.lexists(a) and not a.is_dir()) for a in ancestors):
            continue  # beneath a link, a file or a fifo nothing can be made (and nothing outside)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                continue
            if kind == "file":
                path.write_bytes(data)
                files[rel] = data
            elif kind == "folder":
                path.mkdir()
            elif kind == "fifo":
                os.mkfifo(path)
                others.add(rel)
            else:
                target = {
                    "secret": str(outside / "secret.txt"), "secret-folder": str(outside),
                    "climbs": "../" * 6 + "run.json", "zero": "/dev/zero", "dangling": "/nonexistent/x",
                    "loop": path.name, "sibling": made[-1].rsplit("/", 1)[-1] if made else "x",
                }[link]
                path.symlink_to(target)
                others.add(rel)
        except FileExistsError:
            continue
        made.append(rel)
    return files, others


def _files_under(folder: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(dirpath, name)
            if stat.S_ISREG(path.lstat().st_mode):
                found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def _everything(root: Path, skip: tuple[Path, ...]) -> set[str]:
    seen = set()
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        seen |= {str(Path(dirpath, n).relative_to(root)) for n in dirs + names}
    return seen


def _skipped(dest: Path) -> list[dict[str, str]]:
    if not (dest / "skipped.csv").exists():
        return []
    with open(dest / "skipped.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@SETTINGS
@given(st.lists(ENTRY, max_size=12))
def test_any_outputs_tree_is_collected_byte_exact_with_links_listed_and_nothing_outside_dest(
    entries: list[tuple[list[str], str, bytes, str]],
) -> None:
    from parallel_engine.collect import collect

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        outside = root / "outside"
        outside.mkdir()
        (outside / "secret.txt").write_bytes(SECRET)
        store = local_store(root / "store")
        finished_run(store, {"a": AttemptState.SUCCEEDED})
        files, others = _make(outputs_dir(root / "store", RUN_ID, "a"), outside, entries)
        before = _everything(root, (root / "store", root / "dest"))

        collect(store, RUN_ID, root / "dest")

        assert _files_under(root / "dest" / "a") == files
        assert {row["path"] for row in _skipped(root / "dest")} == {printable(p) for p in others}
        assert _everything(root, (root / "store", root / "dest")) == before
        assert all(SECRET not in data for data in _files_under(root / "dest").values())
        assert staging_left(root / "dest") == []


OBJECT_NAMES = st.one_of(
    st.text(min_size=0, max_size=40),
    st.lists(st.sampled_from(["..", ".", "", "a", "b", "é", "x\0y", "\\..", "L" * 256]), min_size=1, max_size=6)
    .map("/".join),
)


@SETTINGS
@given(st.dictionaries(OBJECT_NAMES, st.binary(max_size=256), max_size=12))
def test_any_object_names_in_a_bucket_never_write_outside_dest(objects: dict[str, bytes]) -> None:
    from parallel_engine.collect import collect

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = memory_store()
        finished_run(store, {"a": AttemptState.SUCCEEDED})
        prefix = outputs_key(RUN_ID, "a")
        for name, data in objects.items():
            store.blobs.write(prefix + name, data)
        dest = root / "box" / "one" / "two" / "dest"

        done = collect(store, RUN_ID, dest)

        outside = _everything(root, (dest,))
        assert outside == {"box", "box/one", "box/one/two"}
        collected = _files_under(dest / "a")
        fits = {name: data for name, data in objects.items()
                if parts_of(name) is not None and all(len(p.encode()) <= 255 for p in name.split("/"))}
        folders = {"/".join(name.split("/")[:i]) for name in fits for i in range(1, name.count("/") + 1)}
        for name, data in fits.items():
            if name in folders:
                assert name not in collected  # a file and a folder of one name: the folder wins
            else:
                assert collected[name] == data
        unsafe = {name for name in objects if parts_of(name) is None and not name.endswith("/")}
        assert unsafe <= {item.path for item in done.skipped}
        assert set(collected) <= set(fits)
        assert staging_left(dest) == []
