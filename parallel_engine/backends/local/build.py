"""Build the user's image locally with the Docker engine (the `local` backend's `build`).

The docker SDK sends the context honouring `.dockerignore`; the build uses the host network
(the bridge stays off here, and `pip install` in a Dockerfile must still reach its registry).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallel_engine.errors import BackendError, BuildError

TAIL_LINES = 20
NO_ENGINE_HINT = "start Docker, or set RUNTIME: process"

# Legacy builder: "Step 2/4 : RUN pip install x"; BuildKit: "#5 [2/4] RUN pip install x".
_STEP = re.compile(r"^(Step \d+/\d+ : .*)$")
_BUILDKIT_STEP = re.compile(r"^#\d+ (\[[^\]]*\d+/\d+\] .*)$")
_BUILT = re.compile(r"^Successfully built ([0-9a-f]+)$")


def build_local(
    context: Path,
    tag: str,
    on_line: Callable[[str], None],
    dockerfile: str = "Dockerfile",
) -> str:
    """Build `context` into `tag`, streaming each log line to `on_line`; return the image id."""
    context = Path(context)
    if not context.is_dir():
        raise BuildError(
            f"build context {context} is not a directory",
            hint="pass the folder holding your Dockerfile: `parallel-engine build DIR` (default: code)",
        )
    if not (context / dockerfile).is_file():
        raise BuildError(f"no {dockerfile} in {context} ({context / dockerfile} is missing)", hint="write one (this repository's code/Dockerfile is an example), or pass the folder that has it")

    from parallel_engine.runtimes.docker import (  # lazy: needs the SDK
        ENGINE_WAIT_S,
        engine_available,
        make_client,
    )

    if not engine_available(wait_s=ENGINE_WAIT_S):
        raise BackendError("cannot build: no Docker engine answers", hint=NO_ENGINE_HINT)
    import docker
    import requests

    client = make_client()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    step: str | None = None
    image_id: str | None = None
    partial = ""

    def emit(line: str) -> None:
        nonlocal step, image_id
        line = line.rstrip("\r")
        tail.append(line)
        on_line(line)
        match = _STEP.match(line) or _BUILDKIT_STEP.match(line)
        if match:
            step = match.group(1)
        built = _BUILT.match(line)
        if built:
            image_id = built.group(1)

    def fail(message: str) -> BuildError:
        where = f" at {step}" if step else ""
        log = "\n".join(tail)
        return BuildError(
            f"building {tag} from {context} failed{where}: {message}\n--- last {len(tail)} log lines ---\n{log}",
            hint="fix the failing step in the Dockerfile, then run `parallel-engine build` again",
        )

    try:
        stream = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            network_mode="host",
            decode=True,
            rm=True,
            forcerm=True,
        )
        for item in stream:
            chunk: Any = item.get("stream")
            if chunk:
                partial += chunk
                *lines, partial = partial.split("\n")
                for line in lines:
                    emit(line)
            elif item.get("status"):
                progress = f" {item['progress']}" if item.get("progress") else ""
                emit(f"{item['status']}{progress}")
            if "aux" in item and isinstance(item["aux"], dict) and item["aux"].get("ID"):
                image_id = item["aux"]["ID"]
            if "error" in item or "errorDetail" in item:
                if partial:
                    emit(partial)
                    partial = ""
                detail = item.get("error") or (item.get("errorDetail") or {}).get("message", "unknown error")
                emit(str(detail).rstrip())
                raise fail(str(detail).strip())
        if partial:
            emit(partial)
        if image_id is None:  # neither an aux ID nor "Successfully built": not a success
            raise fail("the build ended without saying it succeeded")
        return str(client.images.get(tag).id)  # the full id; the log only shows a short one
    except BuildError:
        raise
    except docker.errors.APIError as exc:
        raise fail(str(exc.explanation or exc)) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise BackendError(f"building {tag}: the Docker engine failed: {exc}", hint=NO_ENGINE_HINT) from exc
    finally:
        client.close()
