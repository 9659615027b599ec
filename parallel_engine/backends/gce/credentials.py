"""Google credentials, one way: the file CREDENTIALS_FILE names, else Application Default Credentials.

Every Google client of a command shares one credentials object, loaded once (and again only when
the file it came from changed: a notebook picks up a new `gcloud auth application-default login`).
Nothing here knows whether Google or the emulated cloud answers: TOKEN_URI, like the API
endpoints, is only where requests go.

What Google refuses becomes one clear error with the fix (`access_error`): no credentials, an
unreadable or malformed file, a refresh Google refuses (revoked, expired), a 401, a 403 for a
missing permission or a disabled API. All are `AccessError`s: exit code 2, setup the user must fix.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parallel_engine.errors import AccessError, ConfigError, CredentialsError, PermissionDenied

if TYPE_CHECKING:
    from parallel_engine.config import Config

#: One scope that covers Compute, Storage and Cloud Build (what gcloud's ADC login grants).
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
LOGIN = "gcloud auth application-default login"
NO_CREDENTIALS_HINT = f"run `{LOGIN}`, or set CREDENTIALS_FILE to a service-account key file"
FILE_HINT = (f"point CREDENTIALS_FILE at a service-account key or at the file `{LOGIN}` writes "
             "(~/.config/gcloud/application_default_credentials.json), or unset it")  # fmt: skip
#: What google.auth.default() takes from GOOGLE_APPLICATION_CREDENTIALS.
KNOWN_TYPES = ("service_account", "authorized_user", "external_account", "external_account_authorized_user",
               "impersonated_service_account", "gdch_service_account")  # fmt: skip


class ProjectMismatchWarning(UserWarning):
    """PROJECT_ID names another project than the one the credentials carry."""


@dataclass(frozen=True)
class GoogleAuth:
    """Loaded credentials, the project they carry (if any), and where they came from (for messages)."""

    credentials: Any
    project: str | None
    source: str


_lock = threading.Lock()
_cache: dict[tuple[Any, ...], GoogleAuth] = {}
_warned: set[tuple[str, str]] = set()


def google_auth(config: Config) -> GoogleAuth:
    """The command's credentials (loaded on first use, shared by every client)."""
    key = _cache_key(config)
    with _lock:
        found = _cache.get(key)
    if found is None:
        found = _load(config)
        with _lock:
            found = _cache.setdefault(key, found)
    _check_project(config, found)
    return found


def credentials(config: Config) -> Any:
    return google_auth(config).credentials


def google_project(config: Config) -> str:
    """PROJECT_ID, else the project the credentials carry; a ConfigError naming both ways without either."""
    if config.project_id:
        return config.project_id
    auth = google_auth(config)
    if auth.project:
        return auth.project
    raise ConfigError(
        f"PROJECT_ID is required for the gce backend: your credentials ({auth.source}) carry no project",
        hint="set PROJECT_ID in .config.yaml (or --set PROJECT_ID=... / PARALLEL_ENGINE_PROJECT_ID)",
    )


# -- loading ---------------------------------------------------------------------------------
def _credentials_path(config: Config) -> Path | None:
    return Path(config.credentials_file).expanduser().absolute() if config.credentials_file else None


def _adc_path() -> Path | None:
    """The file google.auth.default() reads, if any: GOOGLE_APPLICATION_CREDENTIALS, else gcloud's."""
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        return Path(named).expanduser().absolute()
    try:
        from google.auth import _cloud_sdk

        return Path(_cloud_sdk.get_application_default_credentials_path())  # type: ignore[no-untyped-call]  # google-auth leaves it untyped
    except Exception:  # noqa: BLE001 - only a cache key: without it, the credentials load once per process
        return None


def _cache_key(config: Config) -> tuple[Any, ...]:
    path = _credentials_path(config) or _adc_path()
    try:
        stat = path.stat() if path is not None else None
        stamp = (stat.st_mtime_ns, stat.st_size) if stat is not None else None
    except OSError:
        stamp = None
    return (config.credentials_file, config.token_uri, os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"), path, stamp)


def _load(config: Config) -> GoogleAuth:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    path = _credentials_path(config)
    if path is not None:
        creds, project = _from_file(path, f"CREDENTIALS_FILE {path} ({config.origin('CREDENTIALS_FILE')})")
        source = f"CREDENTIALS_FILE {path}"
    else:
        named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        where = Path(named).expanduser().absolute() if named else None
        if where is not None:  # google-auth reads it first; a broken one is named here, not a traceback there
            _read_info(where, f"GOOGLE_APPLICATION_CREDENTIALS {where}", KNOWN_TYPES)
        try:
            creds, project = google.auth.default(scopes=SCOPES)
        except DefaultCredentialsError as exc:
            if where is not None:
                raise CredentialsError(f"GOOGLE_APPLICATION_CREDENTIALS {where} is not a valid credentials file: "
                                       f"{_reason(exc)}", hint=FILE_HINT) from None  # fmt: skip
            if "not found" in str(exc).lower() or "could not automatically determine" in str(exc).lower():
                raise CredentialsError("no Google credentials found (Application Default Credentials)",
                                       hint=NO_CREDENTIALS_HINT) from None  # fmt: skip
            raise CredentialsError(f"Application Default Credentials could not be loaded: {_reason(exc)}",
                                   hint=f"run `{LOGIN}` again, or set CREDENTIALS_FILE") from None  # fmt: skip
        source = f"Application Default Credentials{f' from {named}' if named else ''}"
    if config.token_uri and hasattr(creds, "with_token_uri"):
        creds = creds.with_token_uri(config.token_uri)
    return GoogleAuth(creds, project or None, source)


#: The kinds of file CREDENTIALS_FILE takes, each loaded by its own google-auth loader (the
#: generic loader takes any kind, including configurations that run commands).
FILE_TYPES = ("service_account", "authorized_user")


def _from_file(path: Path, what: str) -> tuple[Any, str | None]:
    """(credentials, project) from a service-account key or an authorized_user (ADC) file."""
    from google.oauth2 import credentials as user
    from google.oauth2 import service_account

    info = _read_info(path, what, FILE_TYPES)
    try:
        if info["type"] == "service_account":
            key = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]  # google-auth leaves it untyped
            return key, info.get("project_id")
        return user.Credentials.from_authorized_user_info(info, scopes=SCOPES), None  # type: ignore[no-untyped-call]  # google-auth leaves it untyped
    except (ValueError, KeyError) as exc:
        raise CredentialsError(f"{what} is not a valid {info['type']} file: {exc}", hint=FILE_HINT) from None


def _read_info(path: Path, what: str, types: tuple[str, ...]) -> dict[str, Any]:
    """A credentials file's JSON, readable and of one of `types`, or one clear error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialsError(f"{what} cannot be read: {exc.strerror or exc}", hint=FILE_HINT) from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{what} is not a credentials file: it is not UTF-8 text", hint=FILE_HINT) from None
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise CredentialsError(f"{what} is not a credentials file: not JSON ({exc})", hint=FILE_HINT) from None
    kind = info.get("type") if isinstance(info, dict) else None
    if kind not in types:
        shown = f"its type is {kind!r}" if kind else "it has no \"type\""
        raise CredentialsError(f"{what} is not a credentials file parallel-engine takes: {shown} (expected "
                               f"{' or '.join(types[:2])})", hint=FILE_HINT)  # fmt: skip
    return dict(info)


def _reason(exc: BaseException) -> str:
    """The most precise words of a google-auth error (its cause often says which field is missing)."""
    cause = exc.__cause__
    text = str(exc.args[0]) if exc.args else str(exc)
    return f"{text} ({cause})" if cause is not None and str(cause) not in text else text


def _check_project(config: Config, auth: GoogleAuth) -> None:
    """A PROJECT_ID other than the credentials' project is shown once: PROJECT_ID is used."""
    if not config.project_id or not auth.project or config.project_id == auth.project:
        return
    pair = (config.project_id, auth.project)
    with _lock:
        if pair in _warned:
            return
        _warned.add(pair)
    warnings.warn(
        f"PROJECT_ID is {config.project_id} ({config.origin('PROJECT_ID')}) but your credentials "
        f"({auth.source}) belong to project {auth.project}: using {config.project_id}",
        ProjectMismatchWarning, stacklevel=3,
    )  # fmt: skip


# -- what Google refused ----------------------------------------------------------------------
#: Each API's name in messages and its service name (for `gcloud services enable`).
APIS = {
    "compute": ("Compute Engine", "compute.googleapis.com"),
    "storage": ("Cloud Storage", "storage.googleapis.com"),
    "cloudbuild": ("Cloud Build", "cloudbuild.googleapis.com"),
}
#: The predefined role that grants a permission, by its prefix, and where it is granted
#: (README "What you need on Google Cloud"); None: on the project.
ROLES = (
    ("iam.serviceAccounts.actAs", "roles/iam.serviceAccountUser", "the VMs' service account"),
    ("compute.", "roles/compute.instanceAdmin.v1", None),
    ("storage.buckets.", "roles/storage.admin", "the bucket"),
    ("storage.", "roles/storage.objectAdmin", "the bucket"),
    ("cloudbuild.", "roles/cloudbuild.builds.editor", None),
    ("artifactregistry.", "roles/artifactregistry.writer", "the repository"),
)
_PERMISSION = re.compile(r"Required '([a-zA-Z]+\.[\w.]+)' permission|Permission '([a-zA-Z]+\.[\w.]+)' denied"
                         r"|does not have ([a-zA-Z]+\.[\w.]+) access|\b(iam\.serviceAccounts\.actAs)\b")  # fmt: skip
_DISABLED = re.compile(r"apis/api/([a-z0-9.-]+\.googleapis\.com)")
_SCOPES = ("insufficient authentication scopes", "scope(s) are not authorized", "ACCESS_TOKEN_SCOPE_INSUFFICIENT")


def role_for(permission: str, project: str = "") -> str:
    """The role to grant for `permission`, and on what."""
    for prefix, role, scope in ROLES:
        if permission.startswith(prefix):
            return f"{role} on {scope}" if scope else role + (f" in project {project}" if project else "")
    return "a role that grants it (https://cloud.google.com/iam/docs/permissions-reference)"


def access_error(exc: BaseException, api: str, permission: str = "", project: str = "") -> AccessError | None:
    """The AccessError an exception of a Google client stands for, or None when it is not one.

    `permission` is what the call needed, for a 403 that does not name it (Cloud Build's "The
    caller does not have permission"); `project` is named in the fixes.
    """
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError, RefreshError

    title, _ = APIS.get(api, (api, ""))
    if isinstance(exc, AccessError):
        return exc
    if isinstance(exc, DefaultCredentialsError):
        return CredentialsError(f"no usable Google credentials: {_reason(exc)}", hint=NO_CREDENTIALS_HINT)
    if isinstance(exc, RefreshError):
        return _refused_refresh(exc)
    if isinstance(exc, gexc.Unauthorized):
        return CredentialsError(f"{title} refused your credentials (401): {_message(exc)}",
                                hint=f"they were revoked or have expired: run `{LOGIN}` again, or check CREDENTIALS_FILE")
    if isinstance(exc, gexc.Forbidden) and "rateLimitExceeded" not in str(exc):
        return _forbidden(exc, api, permission, project)
    return None


def _message(exc: Any) -> str:
    return str(getattr(exc, "message", "") or exc).strip()


def _refused_refresh(exc: BaseException) -> CredentialsError:
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    error, detail = str(data.get("error", "")), str(data.get("error_description", "")) or str(exc.args[0] if exc.args else exc)
    if error == "invalid_grant":
        return CredentialsError(f"Google refused to refresh your credentials: {detail} (invalid_grant)",
                                hint=f"the login was revoked or has expired: run `{LOGIN}` again "
                                     "(a service-account key: create a new key and point CREDENTIALS_FILE at it)")
    if error == "invalid_scope":
        return CredentialsError(f"your credentials were not granted the cloud-platform scope: {detail}",
                                hint=f"run `{LOGIN}` again (without --scopes)")
    return CredentialsError(f"Google credentials could not be refreshed: {detail}",
                            hint=f"run `{LOGIN}` again, or check CREDENTIALS_FILE")


def _forbidden(exc: Any, api: str, permission: str, project: str) -> AccessError | None:
    """A 403 that is the user's setup (an API disabled, a scope or a permission missing), or None
    (quota, rate limits and anything else stay the backend's)."""
    title, default_service = APIS.get(api, (api, ""))
    text = f"{_message(exc)} {getattr(exc, 'reason', '') or ''} {json.dumps(getattr(exc, 'errors', None) or [], default=str)}"
    metadata = getattr(exc, "metadata", None) or {}
    disabled = _DISABLED.search(text)
    if "SERVICE_DISABLED" in text or "accessNotConfigured" in text or disabled:
        service = str(metadata.get("service") or (disabled.group(1) if disabled else default_service))
        where = f" --project {project}" if project else ""
        return PermissionDenied(f"the {title} API is not enabled in project {project or metadata.get('consumer', '?')}",
                                hint=f"enable it: `gcloud services enable {service}{where}` (then wait a minute)")
    if any(words in text for words in _SCOPES):
        return CredentialsError(f"{title} refused the call: your credentials lack the cloud-platform scope",
                                hint=f"run `{LOGIN}` again (without --scopes)")
    found = _PERMISSION.search(text)
    needed = next((group for group in found.groups() if group), "") if found else ""
    if not needed and permission and "does not have permission" in text:  # Cloud Build names none
        needed = permission
    if not needed:
        return None
    return PermissionDenied(f"{title} refused the call: your credentials lack the permission {needed}",
                            hint=f"grant your account {role_for(needed, project)}")
