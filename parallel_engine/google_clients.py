"""The official Google clients, pointed at Google or at the emulated cloud, and one retry policy.

Endpoints come from config (COMPUTE_ENDPOINT, STORAGE_ENDPOINT, CLOUDBUILD_ENDPOINT); a loopback
endpoint means the emulated cloud, which takes anonymous credentials. Everything else uses
Application Default Credentials. Google libraries are imported lazily: local runs never pay for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from parallel_engine.errors import BackendError

if TYPE_CHECKING:
    from google.cloud import storage

    from parallel_engine.config import Config

T = TypeVar("T")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_emulated(endpoint: str | None) -> bool:
    return bool(endpoint) and (urlparse(endpoint).hostname or "") in LOOPBACK


def _credentials(endpoint: str | None) -> Any:
    if is_emulated(endpoint):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    return None  # Application Default Credentials


def _options(endpoint: str | None) -> dict[str, str] | None:
    return {"api_endpoint": endpoint.rstrip("/")} if endpoint else None


def storage_client(config: Config) -> storage.Client:
    from google.cloud import storage

    return storage.Client(
        project=config.project_id,
        credentials=_credentials(config.storage_endpoint),
        client_options=_options(config.storage_endpoint),
    )


def compute_client(config: Config, kind: str) -> Any:
    """`kind` is a compute_v1 client class name: InstancesClient, ZoneOperationsClient, RegionsClient, …"""
    from google.cloud import compute_v1

    return getattr(compute_v1, kind)(
        credentials=_credentials(config.compute_endpoint), client_options=_options(config.compute_endpoint)
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


def call_google(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a Google API, retried with backoff and jitter on 429, 5xx, exhausted resources, rate
    limits and connection errors; what still fails becomes a BackendError."""

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
        if is_google_error(exc):  # covers every type _transient retries
            raise BackendError(f"Google API call failed: {exc}") from exc
        raise


def is_google_error(exc: BaseException) -> bool:
    """An error of a Google client or its transport (what the boundary turns into BackendError)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import GoogleAuthError

    return isinstance(exc, gexc.GoogleAPIError | GoogleAuthError | requests.RequestException | ConnectionError)
