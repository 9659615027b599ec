"""Reading a local tree that a task may still be changing, without ever following a link.

A task's outputs folder is written by the task (on the docker runtime: by a container, whose
links point into the container's filesystem, resolved here on the host). So its tree is walked
with `lstat` semantics (`scandir` entries, never followed), and each file is opened component by
component beneath the store's root with O_NOFOLLOW: a folder swapped for a link after the walk
makes that open fail (ELOOP/ENOTDIR) instead of leading outside. A file is copied only if the
descriptor opened is a regular file, and only the size it had then, so a file that keeps growing
(or a device swapped in) cannot make a copy endless. No check-then-use: the descriptor checked is
the one read.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from parallel_engine.paths import parts_of

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
#: Errors creating a target that are about its name (this filesystem refuses it, or another entry
#: holds it), not about the disk: that one file is skipped, the others are copied.
NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.EILSEQ, errno.EINVAL})


@dataclass(frozen=True)
class Skipped:
    """An entry that was not copied, and why: `kind` is `link` (`detail`: its target), `fifo`,
    `socket`, `device`, `other`, `unsafe name`, `name clash`, `name refused here`, `gone` (removed
    since it was listed) or `unreadable`; `detail` says more where there is more to say."""

    key: str
    kind: str
    detail: str = ""


#: What a listing that follows no link finds: regular files' keys, and every other entry.
Listing = tuple[list[str], list[Skipped]]
#: (key, local path) pairs to copy, and what was not copied.
Pairs = list[tuple[str, Path]]
Skips = list[Skipped]


class DestError(OSError):
    """Writing a copy failed for a reason of the destination's own (no space, no permission)."""


def kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _odd(key: str, mode: int, path: str, dir_fd: int | None = None) -> Skipped:
    """What a non-regular entry is; for a link, its target as written (read, never followed)."""
    kind = kind_of(mode)
    target = ""
    if kind == "link":
        try:
            target = os.readlink(path, dir_fd=dir_fd)
        except OSError:
            pass
    return Skipped(key, kind, target)


def walk(folder: str, folder_key: str, prefix: str) -> Listing:
    """Keys (`folder_key` + relative path) of the regular files under `folder` that start with
    `prefix`, sorted, and every other entry that is not a folder; links are listed, never entered.
    A sub-folder that cannot be read is listed as `unreadable`; `folder` itself raises OSError."""
    files: list[str] = []
    odd: list[Skipped] = []
    stack = [(folder, folder_key)]
    while stack:
        path, key = stack.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    name = key + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if (name + "/").startswith(prefix) or prefix.startswith(name + "/"):
                            stack.append((entry.path, name + "/"))
                    elif not name.startswith(prefix):
                        continue
                    elif entry.is_file(follow_symlinks=False):
                        files.append(name)
                    else:
                        try:
                            odd.append(_odd(name, entry.stat(follow_symlinks=False).st_mode, entry.path))
                        except FileNotFoundError:
                            continue
        except (FileNotFoundError, NotADirectoryError):
            if path == folder:
                return [], []
            continue  # removed (or swapped) since its parent was read
        except OSError as exc:
            if path == folder:
                raise
            odd.append(Skipped(key.rstrip("/"), "unreadable", exc.strerror or str(exc)))
    files.sort()
    return files, odd


class Beneath:
    """Opens keys beneath `root` one component at a time, never through a link.

    The folder of the last key stays open: keys come sorted, so a run of files in one folder
    costs one walk down. At most two descriptors are open at a time.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._parts: tuple[str, ...] | None = None
        self._fd = -1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._parts = -1, None

    def __enter__(self) -> Beneath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _folder(self, parts: tuple[str, ...]) -> int:
        if parts == self._parts:
            return self._fd
        self.close()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._parts = fd, parts
        return fd

    def open_regular(self, key: str) -> tuple[int, int] | Skipped:
        """(descriptor, size) of `key` if it is a regular file reached through folders only;
        otherwise what it is (or why it cannot be opened)."""
        parts = parts_of(key)
        if parts is None:
            return Skipped(key, "unsafe name")
        try:
            folder = self._folder(parts[:-1])
        except OSError as exc:
            return _open_failure(key, exc, "a folder on its path")
        name = parts[-1]
        try:
            mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                return _odd(key, mode, name, folder)
            fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
        except OSError as exc:
            return _open_failure(key, exc, "it")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between the stat and the open
            os.close(fd)
            return Skipped(key, kind_of(st.st_mode), "changed while being collected")
        return fd, st.st_size


def _open_failure(key: str, exc: OSError, what: str) -> Skipped:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return Skipped(key, "link", f"{what} became a link while being collected")
    if exc.errno == errno.ENXIO:
        return Skipped(key, "socket")
    if exc.errno == errno.ENOENT:
        return Skipped(key, "gone", "removed since it was listed")
    return Skipped(key, "unreadable", exc.strerror or str(exc))


def copy_to_new(source: int, size: int, target: str, key: str) -> Skipped | None:
    """Copy `size` bytes of the open `source` into a new file `target` (never an existing one,
    never through a link). Closes `source`. Returns why it was skipped, if it was; raises
    DestError when the destination itself fails. Nothing half-written is left at `target`."""
    try:
        try:
            out = os.open(target, _NEW_FILE_FLAGS, 0o666)
        except OSError as exc:
            if exc.errno in NAME_ERRNOS:
                return Skipped(key, "name refused here", exc.strerror or str(exc))
            raise DestError(exc.errno, exc.strerror, target) from None
        try:
            skipped = _pump(source, out, size, target, key)
        except BaseException:
            os.close(out)
            os.unlink(target)
            raise
        os.close(out)
        if skipped is not None:
            os.unlink(target)
        return skipped
    finally:
        os.close(source)


def _pump(source: int, out: int, size: int, target: str, key: str) -> Skipped | None:
    offset = 0
    while offset < size:
        try:
            chunk = os.pread(source, min(_CHUNK, size - offset), offset)
        except OSError as exc:
            return Skipped(key, "unreadable", exc.strerror or str(exc))
        if not chunk:
            break  # truncated since it was opened: what is there is what it holds
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(out, view):]
            except OSError as exc:
                raise DestError(exc.errno, exc.strerror, target) from None
        offset += len(chunk)
    return None
