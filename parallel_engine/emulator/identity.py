"""Who is calling: the orchestrator (a user or a service account), or a VM.

Google tells callers apart by their OAuth token; so does the emulator. Every token is minted here:
a VM's by its metadata server, the orchestrator's by the OAuth token endpoint (oauth.py) in
exchange for the refresh token of an `authorized_user` file or a JWT signed with a service-account
key; a service account may also send such a self-signed JWT as its bearer token, as Google's
client libraries do. Tokens the emulator mints are valid for `token_lifetime_seconds` of emulated
time. A call without a token, or with one that expired, was revoked or was never issued, gets 401
as on Google. A token-less call from one of the VMs' processes (`Guests`, found by the connection's
source port) is counted under that VM.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from parallel_engine.emulator import jwt, peers
from parallel_engine.emulator.clock import Clock

ORCHESTRATOR = "orchestrator"  # whoever holds the credentials file: a user or a service account
VM = "vm"
UNKNOWN = "unknown"  # no token (and not a VM's process), or a bearer token this emulator never issued

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


@dataclass
class Grant:
    """What a refresh token or a service-account key stands for; revoking it ends its tokens too."""

    email: str
    scopes: frozenset[str]  # what the account may ask for (a service account: anything)
    revoked: bool = False
    public_key: Any = None  # a service account's key (jwt.PublicKey), to check its signatures


class GrantError(Exception):
    """The token endpoint refuses a grant: `error` and `description` as Google's endpoint words them."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


@dataclass
class _Token:
    caller: Caller
    expires: float  # time.monotonic()
    grant: Grant | None = None


@dataclass
class _Accounts:
    refresh: dict[str, tuple[str, str, Grant]] = field(default_factory=dict)  # refresh token -> client, secret
    keys: dict[str, Grant] = field(default_factory=dict)  # private_key_id -> service account


class TokenRegistry:
    """Every token the emulator minted, the accounts that may ask for more, and who each token is
    (thread-safe; one per emulator)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._accounts = _Accounts()
        self.guests = Guests()

    def lifetime(self) -> float:
        """Real seconds a token minted now stays valid."""
        return self.clock.real(self.clock.durations.token_lifetime_seconds)

    def refresh_margin(self) -> float:
        """Real seconds before expiry at which the metadata server mints a new token (5 min, scaled)."""
        return self.clock.real(min(300.0, self.clock.durations.token_lifetime_seconds / 2))

    # -- minting --------------------------------------------------------------------------
    def _mint(self, caller: Caller, lifetime: float, grant: Grant | None = None) -> tuple[str, float]:
        token = f"ya29.emulated-{secrets.token_urlsafe(24)}"
        now = time.monotonic()
        expires = now + lifetime
        with self._lock:  # expired tokens are kept one more lifetime, to count their calls under their caller
            keep = max(lifetime, self.lifetime())
            self._tokens = {t: entry for t, entry in self._tokens.items() if entry.expires + keep > now}
            self._tokens[token] = _Token(caller, expires, grant)
        return token, expires

    def issue(self, vm: str, email: str, scopes: frozenset[str]) -> tuple[str, float]:
        """A new token for `vm` (its metadata server's) and the `time.monotonic()` at which it expires."""
        return self._mint(Caller(VM, vm, email, scopes), self.lifetime())

    def issue_for(self, email: str, scopes: Iterable[str], lifetime: float | None = None) -> str:
        """A token for an account of the emulator's own (Cloud Build's service agent pushing an image)."""
        caller = Caller(ORCHESTRATOR, None, email, frozenset(scopes))
        return self._mint(caller, self.lifetime() if lifetime is None else lifetime)[0]

    # -- accounts ---------------------------------------------------------------------------
    def add_user(self, email: str, scopes: Iterable[str]) -> dict[str, str]:
        """A user who ran `gcloud auth application-default login`: the client id, secret and
        refresh token an `authorized_user` file holds."""
        client_id = f"{secrets.randbelow(10**12):012d}-emulated.apps.googleusercontent.com"
        secret, refresh = f"d-{secrets.token_urlsafe(18)}", f"1//emulated-{secrets.token_urlsafe(32)}"
        with self._lock:
            self._accounts.refresh[refresh] = (client_id, secret, Grant(email, frozenset(scopes)))
        return {"client_id": client_id, "client_secret": secret, "refresh_token": refresh}

    def add_service_account(self, email: str, key_id: str, public_key: Any) -> None:
        """A service-account key whose JWTs the token endpoint (and any API, as a bearer) accepts."""
        with self._lock:
            self._accounts.keys[key_id] = Grant(email, frozenset({CLOUD_PLATFORM}), public_key=public_key)

    # -- the token endpoint's grants ---------------------------------------------------------
    def refresh_grant(self, client_id: str, secret: str, refresh: str, scope: str) -> tuple[str, float, str]:
        """(access token, real seconds it lives, granted scopes) for a refresh token, as Google's
        endpoint answers `grant_type=refresh_token`; GrantError otherwise."""
        with self._lock:
            found = self._accounts.refresh.get(refresh)
        if found is None or found[2].revoked:
            raise GrantError(400, "invalid_grant", "Token has been expired or revoked.")
        known_id, known_secret, grant = found
        if (client_id, secret) != (known_id, known_secret):
            raise GrantError(401, "invalid_client", "The OAuth client was not found.")
        asked = frozenset(scope.split()) if scope.strip() else grant.scopes
        if not asked <= grant.scopes:
            raise GrantError(400, "invalid_scope", f"Some requested scopes were invalid. {{invalid={sorted(asked - grant.scopes)}}}")
        token, _ = self._mint(Caller(ORCHESTRATOR, None, grant.email, asked), self.lifetime(), grant)
        return token, self.lifetime(), " ".join(sorted(asked))

    def jwt_grant(self, assertion: str, audiences: Iterable[str]) -> tuple[str, float]:
        """(access token, real seconds it lives) for a JWT signed with a known service-account key
        (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`); GrantError otherwise."""
        grant, claims = self._signed_by_key(assertion)
        if claims.get("aud") not in set(audiences):
            raise GrantError(400, "invalid_grant", "Invalid JWT: audience does not match the token endpoint.")
        scopes = frozenset(str(claims.get("scope", "")).split())
        if not scopes:
            raise GrantError(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token, _ = self._mint(Caller(ORCHESTRATOR, None, grant.email, scopes), self.lifetime(), grant)
        return token, self.lifetime()

    def _signed_by_key(self, assertion: str) -> tuple[Grant, dict[str, Any]]:
        try:
            header, claims = jwt.decode(assertion)
        except ValueError:
            raise GrantError(400, "invalid_grant", "Invalid JWT Signature.") from None
        with self._lock:
            grant = self._accounts.keys.get(str(header.get("kid")))
        if grant is None or grant.revoked or not jwt.verify(assertion, grant.public_key):
            raise GrantError(400, "invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != grant.email or not jwt.live(claims):
            raise GrantError(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) "
                             "and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
        return grant, claims

    # -- early ends (the control API) ----------------------------------------------------------
    def expire(self, kind: str | None = None) -> int:
        """End now every live token (of callers of `kind`), as if its lifetime were over; how many.
        A refresh token or key still gets new ones."""
        now = time.monotonic()
        ended = 0
        with self._lock:
            for entry in self._tokens.values():
                if entry.expires > now and kind in (None, entry.caller.kind):
                    entry.expires = now
                    ended += 1
        return ended

    def revoke(self) -> int:
        """Revoke every refresh token and service-account key (as `gcloud auth application-default
        revoke` or deleting a key does): their tokens stop working and no new ones are granted."""
        with self._lock:
            grants = [g for _, _, g in self._accounts.refresh.values()] + list(self._accounts.keys.values())
            for grant in grants:
                grant.revoked = True
        return len(grants)

    # -- who is calling -------------------------------------------------------------------------
    def caller(self, authorization: str | None, peer: tuple[int, int] | None = None) -> Caller:
        """The caller behind an `Authorization` header, and for a call without one, its connection.

        No header: problem MISSING, counted under the VM whose process made the call (`peer`: client
        port, server port), if any. A live token: its caller. An expired or revoked token: its
        caller, with problem INVALID. Any other bearer value: UNKNOWN, INVALID.
        """
        if not authorization or not authorization.strip():
            vm = self.guests.vm_behind(*peer) if peer is not None else None
            return Caller(UNKNOWN, problem=MISSING) if vm is None else Caller(VM, vm, problem=MISSING)
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return INVALID_CALLER
        return self.bearer(value.strip())

    def bearer(self, value: str) -> Caller:
        """Who a bearer token (minted here, or a self-signed service-account JWT) stands for."""
        with self._lock:
            found = self._tokens.get(value)
        if found is None:
            return self._self_signed(value) if value.count(".") == 2 else INVALID_CALLER
        caller = found.caller
        if time.monotonic() >= found.expires or (found.grant is not None and found.grant.revoked):
            return Caller(caller.kind, caller.vm, caller.email, caller.scopes, problem=INVALID)
        return caller

    def _self_signed(self, value: str) -> Caller:
        """A service account's own JWT as its bearer token (what Google's client libraries send for
        a key file): its `scope` claim, or an `aud` naming an API, says what it may do."""
        try:
            grant, claims = self._signed_by_key(value)
        except GrantError:
            return INVALID_CALLER
        scopes = frozenset(str(claims.get("scope", "")).split()) or (frozenset({CLOUD_PLATFORM}) if claims.get("aud") else frozenset())
        return Caller(ORCHESTRATOR, None, grant.email, scopes)


INVALID_CALLER = Caller(UNKNOWN, problem=INVALID)
