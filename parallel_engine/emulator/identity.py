"""Who is calling: the orchestrator, or a VM that got its token from its metadata server.

Google tells callers apart by their OAuth token; so does the emulator. A VM's metadata server hands
out tokens minted here; a call that carries one is that VM's, any other call (the orchestrator's
clients use AnonymousCredentials and send no token) is the orchestrator's.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

ORCHESTRATOR = "orchestrator"
VM = "vm"

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

    kind: str  # ORCHESTRATOR or VM
    vm: str | None = None
    email: str | None = None
    scopes: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        return self.kind if self.vm is None else f"{self.kind}:{self.vm}"


ORCHESTRATOR_CALLER = Caller(ORCHESTRATOR)


class TokenRegistry:
    """Tokens minted for VMs (thread-safe; shared by every emulated service of one emulator)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, Caller] = {}

    def issue(self, vm: str, email: str, scopes: frozenset[str]) -> str:
        token = f"ya29.emulated-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._tokens[token] = Caller(VM, vm, email, scopes)
        return token

    def caller(self, authorization: str | None) -> Caller:
        """The caller behind an `Authorization` header; unknown or absent tokens are the orchestrator's."""
        if authorization and authorization.lower().startswith("bearer "):
            with self._lock:
                found = self._tokens.get(authorization[7:].strip())
            if found is not None:
                return found
        return ORCHESTRATOR_CALLER
