"""Who is calling: the orchestrator, or a VM that got its token from its metadata server.

Google tells callers apart by their OAuth token; so does the emulator. A VM's metadata server hands
out tokens minted here, valid for `token_lifetime_seconds` of emulated time; a call that carries a
live one is that VM's. A bearer token that is expired or was never issued is refused (401), as
Google refuses it. A call without a token is the orchestrator's (its clients use
AnonymousCredentials and send none) unless it comes from one of the VMs' processes (`Guests`, by
the connection's source port): then it is that VM's, and refused with 401 as Google would.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from parallel_engine.emulator import peers
from parallel_engine.emulator.clock import Clock

ORCHESTRATOR = "orchestrator"
VM = "vm"
UNKNOWN = "unknown"  # a bearer token this emulator never issued

#: Why a caller is not authenticated (`Caller.problem`): Google answers 401 to both.
MISSING = "missing"  # no token where one is needed
INVALID = "invalid"  # a token that expired or was never issued

#: Scopes that let a token call Compute / write to Storage, as on Google.
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
COMPUTE_SCOPES = frozenset({CLOUD_PLATFORM, "https://www.googleapis.com/auth/compute"})
COMPUTE_READ_SCOPES = COMPUTE_SCOPES | {"https://www.googleapis.com/auth/compute.readonly"}
STORAGE_WRITE_SCOPES = frozenset(
    {
        CLOUD_PLATFORM,
        "https://www.googleapis.com/auth/devstorage.read_write",
        "https://www.googleapis.com/auth/devstorage.full_control",
    }
)
STORAGE_READ_SCOPES = STORAGE_WRITE_SCOPES | {"https://www.googleapis.com/auth/devstorage.read_only"}


@dataclass(frozen=True)
class Caller:
    """The identity behind one HTTP call."""

    kind: str  # ORCHESTRATOR, VM or UNKNOWN
    vm: str | None = None
    email: str | None = None
    scopes: frozenset[str] = frozenset()
    problem: str | None = None  # MISSING or INVALID: answer 401

    @property
    def label(self) -> str:
        return self.kind if self.vm is None else f"{self.kind}:{self.vm}"


ORCHESTRATOR_CALLER = Caller(ORCHESTRATOR)


class Guests:
    """The VMs' processes as this machine sees them: their metadata address and their scripts' trees.

    A process is a VM's when its environment names that VM's metadata server (GCE_METADATA_HOST,
    which the VM's scripts and containers inherit) or when it descends from one of the VM's scripts
    (a child that cleared its environment).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[bytes, str] = {}  # b"127.0.0.1:PORT" -> VM name
        self._roots: dict[int, str] = {}  # pid of a VM's script (its process group) -> VM name
        #: told (verb, value, forget) about every change: the emulator's watchdog (watchdog.py)
        self.notify: Callable[[str, object, bool], None] = lambda verb, value, forget: None

    def add_host(self, vm: str, metadata_host: str) -> None:
        with self._lock:
            self._hosts[metadata_host.encode()] = vm
        self.notify("host", metadata_host, False)

    def add_root(self, vm: str, pid: int) -> None:
        with self._lock:
            self._roots[pid] = vm
        self.notify("group", pid, False)

    def remove(self, vm: str) -> None:
        with self._lock:
            hosts = [h for h, v in self._hosts.items() if v == vm]
            roots = [p for p, v in self._roots.items() if v == vm]
            for host in hosts:
                del self._hosts[host]
            for pid in roots:
                del self._roots[pid]
        for host in hosts:
            self.notify("host", host.decode(), True)
        for pid in roots:
            self.notify("group", pid, True)

    def vm_behind(self, client_port: int, server_port: int) -> str | None:
        """The VM whose process holds the client end of 127.0.0.1:client_port -> :server_port, if any."""
        with self._lock:
            hosts, roots = dict(self._hosts), dict(self._roots)
        if not hosts and not roots:
            return None
        inode = peers.client_inode(client_port, server_port)
        if inode is None or peers.holds("self", inode):  # gone, or this process's own client
            return None
        for pid, vm in peers.vm_processes(hosts, roots):
            if peers.holds(pid, inode):
                return vm
        return None


class TokenRegistry:
    """Tokens minted for VMs, with their expiry on the emulator's clock (thread-safe; one per emulator)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[Caller, float]] = {}  # token -> (caller, monotonic expiry)
        self.guests = Guests()

    def lifetime(self) -> float:
        """Real seconds a token minted now stays valid."""
        return self.clock.real(self.clock.durations.token_lifetime_seconds)

    def refresh_margin(self) -> float:
        """Real seconds before expiry at which the metadata server mints a new token (5 min, scaled)."""
        return self.clock.real(min(300.0, self.clock.durations.token_lifetime_seconds / 2))

    def issue(self, vm: str, email: str, scopes: frozenset[str]) -> tuple[str, float]:
        """A new token for `vm` and the `time.monotonic()` at which it expires."""
        token = f"ya29.emulated-{secrets.token_urlsafe(24)}"
        now = time.monotonic()
        lifetime = self.lifetime()
        expires = now + lifetime
        with self._lock:  # expired tokens are kept one more lifetime, to count their calls under their VM
            self._tokens = {t: entry for t, entry in self._tokens.items() if entry[1] + lifetime > now}
            self._tokens[token] = (Caller(VM, vm, email, scopes), expires)
        return token, expires

    def caller(self, authorization: str | None, peer: tuple[int, int] | None = None) -> Caller:
        """The caller behind an `Authorization` header, and for a call without one, its connection.

        No header: the orchestrator, or when `peer` (client port, server port) is a VM's process,
        that VM with problem MISSING. A live token: its VM. An expired token: its VM, with problem
        INVALID. Any other bearer value: UNKNOWN, INVALID.
        """
        if not authorization or not authorization.strip():
            vm = self.guests.vm_behind(*peer) if peer is not None else None
            return ORCHESTRATOR_CALLER if vm is None else Caller(VM, vm, problem=MISSING)
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return INVALID_CALLER
        with self._lock:
            found = self._tokens.get(value.strip())
        if found is None:
            return INVALID_CALLER  # never issued, or expired long enough ago to be forgotten
        caller, expires = found
        if time.monotonic() >= expires:
            return Caller(VM, caller.vm, caller.email, caller.scopes, problem=INVALID)
        return caller


INVALID_CALLER = Caller(UNKNOWN, problem=INVALID)
