"""The official Google clients, pointed at Google or at the emulated cloud, and one retry policy.

Endpoints come from config (COMPUTE_ENDPOINT, STORAGE_ENDPOINT, CLOUDBUILD_ENDPOINT; unset:
Google's): they are all the emulated cloud changes. Every client gets the command's one set of
credentials (credentials.py). Google libraries are imported lazily: local runs never pay for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from parallel_engine import gcs_client
from parallel_engine.backends.gce.credentials import access_error, credentials, google_project
from parallel_engine.errors import BackendError

if TYPE_CHECKING:
    from google.cloud import storage

    from parallel_engine.config import Config

T = TypeVar("T")


def _options(endpoint: str | None) -> dict[str, str] | None:
    return {"api_endpoint": endpoint.rstrip("/")} if endpoint else None


def storage_client(config: Config) -> storage.Client:
    return gcs_client.storage_client(
        project=google_project(config),
        credentials=credentials(config),
        client_options=_options(config.storage_endpoint),
    )


def compute_client(config: Config, kind: str) -> Any:
    """`kind` is a compute_v1 client class name: InstancesClient, ZoneOperationsClient, RegionsClient, …"""
    from google.cloud import compute_v1

    return getattr(compute_v1, kind)(credentials=credentials(config), client_options=_options(config.compute_endpoint))


def cloudbuild_client(config: Config) -> Any:
    """Cloud Build over REST (its default gRPC transport cannot reach a plain-HTTP endpoint)."""
    from google.cloud.devtools import cloudbuild_v1

    return cloudbuild_v1.CloudBuildClient(
        transport="rest", credentials=credentials(config), client_options=_options(config.cloudbuild_endpoint)
    )


def _transient(exc: BaseException) -> bool:
    """Worth another try: 429, 500, 502, 503, 504, exhausted resources, rate limits, and a
    connection that failed or was cut (creations carry a requestId, so retrying them is safe)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import TransportError

    if isinstance(exc, gexc.TooManyRequests | gexc.ResourceExhausted | gexc.InternalServerError
                  | gexc.BadGateway | gexc.ServiceUnavailable | gexc.GatewayTimeout):
        return True
    if isinstance(exc, gexc.Forbidden):  # Compute's rate limit is a 403 with reason rateLimitExceeded
        return "rateLimitExceeded" in str(exc)
    return isinstance(exc, requests.ConnectionError | requests.Timeout | TransportError | ConnectionError)


def _api_of(func: Callable[..., Any]) -> str:
    """compute, cloudbuild or storage: the API a client method calls."""
    owner = type(getattr(func, "__self__", None)).__module__
    return next((api for api in ("compute", "cloudbuild", "storage") if api in owner), "google")


def call_google(func: Callable[..., T], *args: Any, api: str = "", needs: str = "", **kwargs: Any) -> T:
    """Call a Google API, retried with backoff and jitter on 429, 5xx, exhausted resources, rate
    limits and connection errors. Refused credentials, a missing permission or a disabled API
    become an AccessError saying what fixes it (`api`, default: the client's, and `needs`, the
    permission the call needs, sharpen it); what else still fails becomes a BackendError."""

    @retry(
        retry=retry_if_exception(_transient),
        wait=wait_random_exponential(multiplier=0.5, max=30),
        stop=stop_after_attempt(8),
        reraise=True,
    )
    def attempt() -> T:
        return func(*args, **kwargs)

    try:
        return attempt()
    except Exception as exc:
        request = kwargs.get("request")
        project = str(kwargs.get("project") or kwargs.get("project_id") or getattr(request, "project", "") or "")
        refused = access_error(exc, api or _api_of(func), needs, project)
        if refused is not None:
            raise refused from exc
        if is_google_error(exc):  # covers every type _transient retries
            raise BackendError(f"Google API call failed: {exc}") from exc
        raise


def is_google_error(exc: BaseException) -> bool:
    """An error of a Google client or its transport (what the boundary turns into BackendError)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import GoogleAuthError

    return isinstance(exc, gexc.GoogleAPIError | GoogleAuthError | requests.RequestException | ConnectionError)
