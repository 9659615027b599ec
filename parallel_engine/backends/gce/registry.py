"""Pull a run's image onto this machine with the user's Google credentials (for `debug`).

Artifact Registry takes an OAuth access token as the password of the user `oauth2accesstoken`
(what `gcloud auth print-access-token | docker login -u oauth2accesstoken --password-stdin`
does); it is handed to the engine for this one pull, never written to a docker config.
"""

from __future__ import annotations

from parallel_engine.backends.base import InfoFn
from parallel_engine.config import Config
from parallel_engine.errors import BackendError

TOKEN_USER = "oauth2accesstoken"


def access_token(config: Config) -> str:
    """A live access token of the command's credentials (refreshed when it has none yet)."""
    import google.auth.transport.requests

    from parallel_engine.backends.gce.credentials import access_error, credentials

    creds = credentials(config)
    if not creds.valid:
        try:
            creds.refresh(google.auth.transport.requests.Request())
        except Exception as exc:
            error = access_error(exc, "registry")
            if error is None:
                raise
            raise error from None
    return str(creds.token)


def pull_image(config: Config, image: str, say: InfoFn) -> None:
    """Pull `image` (by digest when pinned) into the local engine, unless it is there already."""
    import docker

    from parallel_engine.runtimes.docker import ENGINE_HINT, image_exists, make_client

    client = make_client()
    try:
        if "@" in image and image_exists(image, client):
            say(f"image {image} is already here")
            return
        say(f"pulling {image} with your Google credentials")
        try:
            client.images.pull(image, auth_config={"username": TOKEN_USER, "password": access_token(config)})
        except docker.errors.APIError as exc:
            raise BackendError(f"cannot pull {image}: {exc.explanation or exc}",
                               hint="run `parallel-engine build` to push it, and check that your account may read "
                                    "the registry (roles/artifactregistry.reader)") from exc
        except docker.errors.DockerException as exc:
            raise BackendError(f"cannot pull {image}: {exc}", hint=ENGINE_HINT) from exc
    finally:
        client.close()
