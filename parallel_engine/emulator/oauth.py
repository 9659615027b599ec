"""Google's OAuth 2.0 token endpoint (what oauth2.googleapis.com/token answers), and the credentials
files that point at it.

`Auth` makes two accounts and writes a file for each, as Google's tools write them: the user's
`authorized_user` file (what `gcloud auth application-default login` writes: a client id, secret
and refresh token) and a service-account key (`service_account`: a private key and its id). Both
name this endpoint as their `token_uri`, so google-auth fetches and refreshes tokens here with the
same requests it sends to Google: `grant_type=refresh_token`, and the jwt-bearer grant of a JWT
signed with the key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from parallel_engine.emulator import jwt
from parallel_engine.emulator.httpbase import JsonHandler, LoopbackServer, Reply
from parallel_engine.emulator.identity import CLOUD_PLATFORM, ORCHESTRATOR, UNKNOWN, Caller, GrantError, TokenRegistry
from parallel_engine.emulator.traffic import FaultRule, Traffic

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # the `aud` google-auth puts in every assertion
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
USER_EMAIL = "user@example.com"
#: What `gcloud auth application-default login` asks for by default.
USER_SCOPES = (CLOUD_PLATFORM, "https://www.googleapis.com/auth/userinfo.email", "openid",
               "https://www.googleapis.com/auth/sqlservice.login")  # fmt: skip


class OAuthServer:
    """POST /token on 127.0.0.1: refresh-token and jwt-bearer grants, answered as Google answers."""

    def __init__(self, tokens: TokenRegistry, traffic: Traffic | None = None) -> None:
        self.tokens = tokens
        self.traffic = traffic
        self._server = LoopbackServer(_make_handler(self))

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def start(self) -> OAuthServer:
        self._server.start("emulator-oauth")
        return self

    def stop(self) -> None:
        self._server.stop()

    def grant(self, form: dict[str, str]) -> Reply:
        """The endpoint's answer to one token request."""
        kind = form.get("grant_type", "")
        try:
            if kind == "refresh_token":
                token, lifetime, scope = self.tokens.refresh_grant(
                    form.get("client_id", ""), form.get("client_secret", ""), form.get("refresh_token", ""),
                    form.get("scope", ""),
                )  # fmt: skip
                return Reply.json(200, {"access_token": token, "expires_in": _seconds(lifetime), "scope": scope,
                                        "token_type": "Bearer"})  # fmt: skip
            if kind == JWT_BEARER:
                audiences = {GOOGLE_TOKEN_URI, self.token_uri}
                token, lifetime = self.tokens.jwt_grant(form.get("assertion", ""), audiences)
                return Reply.json(200, {"access_token": token, "expires_in": _seconds(lifetime), "token_type": "Bearer"})
        except GrantError as refused:
            return Reply.json(refused.status, {"error": refused.error, "error_description": refused.description})
        return Reply.json(400, {"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {kind}"})


def _seconds(lifetime: float) -> int:
    """`expires_in` as Google sends it: whole seconds (at least 1: a client must be able to use it)."""
    return max(1, int(lifetime))


def _make_handler(server: OAuthServer) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def do_POST(self) -> None:
            raw = self.read_body()
            if self.path_only.rstrip("/") != "/token":
                self.send_json(404, {"error": "not_found", "error_description": f"No such endpoint: {self.path_only}"})
                return
            form = {key: values[0] for key, values in parse_qs(raw.decode(errors="replace")).items()}
            caller = Caller(ORCHESTRATOR if form.get("grant_type") else UNKNOWN)
            operation = f"oauth2.token.{form.get('grant_type', 'none').rsplit(':', 1)[-1]}"
            self.answer_call(server.traffic, caller, operation, act=lambda: server.grant(form),
                             unauthenticated=dict, fault_body=_fault_body)  # fmt: skip

        def do_GET(self) -> None:
            self.read_body()
            self.send_json(405, {"error": "invalid_request", "error_description": "Use POST."})

    return Handler


def _fault_body(fault: FaultRule) -> dict[str, str]:
    """An injected failure, in the token endpoint's own error shape."""
    error = "temporarily_unavailable" if fault.status >= 500 else "invalid_request"
    return {"error": error, "error_description": fault.message}


def key_account(project: str) -> str:
    """The email of the service account whose key the emulator hands out."""
    return f"parallel-engine@{project}.iam.gserviceaccount.com"


@dataclass(frozen=True)
class CredentialsFiles:
    """The files the emulator hands the orchestrator (both name the emulator's token endpoint)."""

    user: Path  # authorized_user: what `gcloud auth application-default login` writes
    service_account: Path  # a service-account key, as `gcloud iam service-accounts keys create` writes it


def write_credentials(tokens: TokenRegistry, token_uri: str, project: str, project_number: int,
                      folder: Path) -> CredentialsFiles:  # fmt: skip
    """Make a user and a service account in `tokens`, and write their credentials files into `folder`
    (readable by this user only, as gcloud leaves them)."""
    folder.mkdir(parents=True, exist_ok=True)
    user = tokens.add_user(USER_EMAIL, USER_SCOPES)
    adc = {**user, "account": "", "quota_project_id": project, "token_uri": token_uri,
           "type": "authorized_user", "universe_domain": "googleapis.com"}  # fmt: skip
    email = key_account(project)
    key_id, pem, public = jwt.new_key()
    tokens.add_service_account(email, key_id, public)
    key = {
        "type": "service_account", "project_id": project, "private_key_id": key_id, "private_key": pem,
        "client_email": email, "client_id": str(project_number * 1000 + 7),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }  # fmt: skip
    files = CredentialsFiles(folder / "application_default_credentials.json", folder / "service-account-key.json")
    for path, content in ((files.user, adc), (files.service_account, key)):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(content, out, indent=2)
    return files
