"""Which local process is at the other end of a loopback TCP connection (Linux).

Google refuses a VM's call that carries no token (401); to do the same, the emulator must know that a
token-less call comes from a VM and not from the orchestrator. Both run on this machine, so the
kernel knows: it gives the client socket's inode for its (client port, server port) through
sock_diag netlink (one exact lookup; /proc/net/tcp, which lists every socket, is the fallback),
and the process holding that inode has it among its /proc/PID/fd links. Only processes that
may be a VM's are searched (those whose environment names a VM's metadata server, and the process
trees of the VMs' scripts), so a lookup costs one read per process, not one per open file.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping

from parallel_engine.emulator.netutil import LOOPBACK

_LOOPBACK_HEX = f"{int.from_bytes(socket.inet_aton(LOOPBACK), sys.byteorder):08X}"
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF


def client_inode(client_port: int, server_port: int) -> int | None:
    """The inode of the client end of the connection 127.0.0.1:client_port -> 127.0.0.1:server_port."""
    try:
        return _diag_inode(client_port, server_port)
    except OSError:  # no sock_diag here (a container without it, a non-Linux kernel)
        return _table_inode(client_port, server_port)


def _diag_inode(client_port: int, server_port: int) -> int | None:
    """inet_diag_req_v2 for one exact TCP socket; the inode from its inet_diag_msg."""
    address = socket.inet_aton(LOOPBACK) + bytes(12)
    sockid = struct.pack("!HH", client_port, server_port) + address + address
    sockid += struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)  # any interface, no cookie
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as diag:
        diag.sendto(header + request, (0, 0))
        reply = diag.recv(8192)
    if len(reply) < 16 or struct.unpack_from("=H", reply, 4)[0] == _NLMSG_ERROR:
        return None  # no such socket (the client is gone)
    inode = struct.unpack_from("=I", reply, 16 + 4 + 48 + 16)[0]  # after family..retrans, sockid, 4 u32
    return inode or None


def _table_inode(client_port: int, server_port: int) -> int | None:
    needle = f"{_LOOPBACK_HEX}:{client_port:04X} {_LOOPBACK_HEX}:{server_port:04X}"
    try:
        with open("/proc/net/tcp") as table:
            for line in table:
                if needle in line:
                    fields = line.split()
                    if f"{fields[1]} {fields[2]}" == needle:
                        return int(fields[9]) or None
    except OSError:
        return None
    return None


def holds(pid: int | str, inode: int) -> bool:
    """Whether process `pid` has the socket `inode` open."""
    target = f"socket:[{inode}]"
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"{folder}/{name}") == target:
                return True
        except OSError:
            continue
    return False


def environ(pid: int | str) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def parent(pid: int | str) -> int:
    """The parent pid (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def pids() -> Iterable[str]:
    return (name for name in os.listdir("/proc") if name.isdigit())


def vm_processes(hosts: Mapping[bytes, str], roots: Mapping[int, str]) -> Iterator[tuple[int, str]]:
    """The processes of this machine that are a VM's, as (pid, VM name), from one walk of /proc.

    A process is a VM's when its environment's GCE_METADATA_HOST names a VM's metadata address
    (`hosts`: b"127.0.0.1:PORT" -> VM; yielded as the walk finds them) or when it descends from a
    VM's script (`roots`: script pid -> VM; a child that cleared its environment; yielded after the
    walk). Only for the processes whose environment names no VM is the parent pid read. This process
    (the emulator) is never a VM's. Used by the caller lookup (identity.py) and a VM's power-off
    (guest/machine.py); the watchdog keeps its own stdlib copy, as it runs standalone.
    """
    if not hosts and not roots:
        return
    me = os.getpid()
    parents: dict[int, int] = {}  # pid -> parent pid, of the processes whose environment names no VM
    for name in pids():
        pid = int(name)
        if pid == me:
            continue
        vm = _named_host(environ(name), hosts) if hosts else None
        if vm is not None:
            yield pid, vm
        elif roots:
            parents[pid] = parent(name)
    for pid in parents:  # a process that cleared its environment: walk up to a VM's script
        ancestor, hops = pid, 0
        while ancestor > 1 and ancestor not in roots and hops < 64:
            ancestor, hops = parents.get(ancestor) or parent(ancestor), hops + 1
        if ancestor in roots:
            yield pid, roots[ancestor]


def _named_host(environment: bytes, hosts: Mapping[bytes, str]) -> str | None:
    """The VM whose metadata address an environment's GCE_METADATA_HOST names, if any."""
    for entry in environment.split(b"\0"):
        if entry.startswith(b"GCE_METADATA_HOST=") and entry[18:] in hosts:
            return hosts[entry[18:]]
    return None
