"""posix_spawnp without the GIL: the same call as `os.posix_spawnp`, made through ctypes.

CPython 3.11's `os.posix_spawnp` holds the GIL for the whole vfork + exec, and the child's
file actions (opening two log files) run inside it: measured 0.5 ms per spawn during which no
other thread of the orchestrator ran (bench/local_overhead.py; two workers spawning at once
queued on each other and on the scheduler). ctypes releases the GIL around a foreign call.
Where libc has no usable posix_spawnp (not glibc, not Linux), `os.posix_spawnp` is used.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence

# glibc's attribute flags (spawn.h); POSIX_SPAWN_SETSID is a GNU extension.
_SETSIGDEF = 0x04
_SETSID = 0x80
# Opaque glibc types, over-allocated: posix_spawnattr_t is 336 bytes, file actions 80, sigset_t 128.
_ATTR_BYTES, _ACTIONS_BYTES, _SIGSET_BYTES = 1024, 512, 256


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None:
        return None
    try:
        libc = ctypes.CDLL(None)  # errors come back as return values, not errno
        spawnp = libc.posix_spawnp
    except (OSError, AttributeError):
        return None
    buf = ctypes.c_void_p
    spawnp.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, buf, buf,
                       ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
    spawnp.restype = ctypes.c_int
    libc.posix_spawn_file_actions_addopen.argtypes = [buf, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
    libc.posix_spawnattr_setflags.argtypes = [buf, ctypes.c_short]
    for name in ("posix_spawnattr_init", "posix_spawnattr_destroy", "posix_spawn_file_actions_init",
                 "posix_spawn_file_actions_destroy", "sigemptyset"):
        getattr(libc, name).argtypes = [buf]
    libc.sigaddset.argtypes = [buf, ctypes.c_int]
    libc.posix_spawnattr_setsigdefault.argtypes = [buf, buf]
    return libc


_LIBC = _load_libc()


def _refuse_nul(items: list[bytes]) -> list[bytes]:
    if b"\0" in b"".join(items):  # ctypes would cut the string there; os.posix_spawnp refuses it too
        raise ValueError("embedded null byte")
    return items


def _c_strings(items: list[bytes]) -> "ctypes.Array[ctypes.c_char_p]":
    return (ctypes.c_char_p * (len(items) + 1))(*_refuse_nul(items), None)


def _attributes(libc: ctypes.CDLL, reset_signals: tuple[int, ...]) -> ctypes.Array[ctypes.c_char]:
    """New session, the given signals back to default: the same for every spawn, so built once
    per signal set (posix_spawnp only reads it)."""
    attr = _ATTRS.get(reset_signals)
    if attr is None:
        attr = ctypes.create_string_buffer(_ATTR_BYTES)
        sigset = ctypes.create_string_buffer(_SIGSET_BYTES)
        libc.posix_spawnattr_init(attr)
        libc.sigemptyset(sigset)
        for sig in reset_signals:
            libc.sigaddset(sigset, int(sig))
        libc.posix_spawnattr_setsigdefault(attr, sigset)
        libc.posix_spawnattr_setflags(attr, _SETSIGDEF | _SETSID)
        attr = _ATTRS.setdefault(reset_signals, attr)
    return attr


_ATTRS: dict[tuple[int, ...], "ctypes.Array[ctypes.c_char]"] = {}


def env_entries(env: Mapping[str, str]) -> list[bytes]:
    """`KEY=value` as bytes, the form `spawn` takes (encode a fixed environment once)."""
    return [os.fsencode(key) + b"=" + os.fsencode(value) for key, value in env.items()]


def spawn(
    argv: Sequence[str],
    env: Sequence[bytes],
    opens: Sequence[tuple[int, str, int, int]],
    reset_signals: Sequence[int] = (signal.SIGPIPE, signal.SIGXFSZ),
) -> int:
    """Start `argv` (PATH-searched) in a new session with `env` (`env_entries`); `opens` are
    (fd, path, flags, mode) the child opens before exec. Returns the pid; raises OSError if it
    cannot start, ValueError on a NUL."""
    if _LIBC is None:
        actions = [(os.POSIX_SPAWN_OPEN, fd, path, flags, mode) for fd, path, flags, mode in opens]
        environ = dict(entry.split(b"=", 1) for entry in env)
        return os.posix_spawnp(argv[0], list(argv), environ, file_actions=actions,
                               setsid=True, setsigdef=tuple(reset_signals))
    libc = _LIBC
    c_argv = _c_strings([os.fsencode(arg) for arg in argv])
    c_env = _c_strings(list(env))
    paths = _refuse_nul([os.fsencode(path) for _, path, _, _ in opens])
    attr = _attributes(libc, tuple(reset_signals))
    file_actions = ctypes.create_string_buffer(_ACTIONS_BYTES)
    libc.posix_spawn_file_actions_init(file_actions)
    try:
        for (fd, _, flags, mode), path in zip(opens, paths):
            err = libc.posix_spawn_file_actions_addopen(file_actions, fd, path, flags, mode)
            if err:
                raise OSError(err, os.strerror(err))
        pid = ctypes.c_int(0)
        err = libc.posix_spawnp(ctypes.byref(pid), c_argv[0], file_actions, attr, c_argv, c_env)
    finally:
        libc.posix_spawn_file_actions_destroy(file_actions)
    if err:
        raise OSError(err, os.strerror(err), argv[0])
    return pid.value
