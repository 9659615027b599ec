"""Run an attempt as a Docker container, through the docker SDK (imported lazily).

The container belongs to dockerd, not to us: every one carries the labels
`parallel-engine-run`, `-task`, `-attempt`, so `remove_containers` can find and remove
them from any process (SIGTERM cleanup, `down`, tests). A container is removed once its
exit code is known and its logs are drained, or when it is killed.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parallel_engine.errors import BackendError, ConfigError
from parallel_engine.protocol import CONTAINER_OUTPUT_DIR, ENV_OUTPUT_DIR, LABEL_ATTEMPT, LABEL_RUN, LABEL_TASK
from parallel_engine.runtimes.base import AttemptSpec

if TYPE_CHECKING:  # the SDK is only needed when containers are actually used
    import docker
    from docker.models.containers import Container

NETWORKS = ("none", "host")  # the bridge stays off: all traffic stays on loopback

API_TIMEOUT_S = 60.0  # plain API calls (create, start, kill, remove)
WAIT_CHUNK_S = 60.0  # one `wait` request; re-issued until the container stops
ENGINE_GONE_S = 60.0  # how long a vanished engine is tolerated while waiting
LOG_DRAIN_S = 30.0  # how long to wait for the log threads once the container stopped
EXIT_ENGINE_ERROR = 125  # as `docker run` says when the daemon fails
EXIT_KILLED = 137  # 128 + SIGKILL
ENGINE_WAIT_S = 15.0  # how long a command that needs the engine waits for a busy one
ENGINE_HINT = "start Docker (as root: PE_START_DOCKER=1 bash scripts/ensure-docker.sh), or set RUNTIME: process"

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]+")
_NAME_MAX = 120


def _docker() -> Any:
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a hard dependency
        raise BackendError("the docker SDK is not installed", hint="pip install docker") from exc
    return docker


def _requests_errors() -> tuple[type[BaseException], ...]:
    import requests

    return (requests.exceptions.RequestException,)


def make_client(timeout: float | None = None) -> docker.DockerClient:
    """A client for the engine the environment points at (DOCKER_HOST or the default socket).

    `timeout` bounds plain API calls; log streams disable it (the SDK does), and `wait` is
    issued in chunks, so a long quiet container is fine.
    """
    sdk = _docker()
    try:
        client: docker.DockerClient = sdk.from_env(timeout=API_TIMEOUT_S if timeout is None else timeout, max_pool_size=64)
        return client
    except sdk.errors.DockerException as exc:
        raise BackendError(f"no Docker engine answers: {exc}", hint=ENGINE_HINT) from exc


def engine_available(timeout: float = 3.0, wait_s: float = 0.0) -> bool:
    """True when a Docker engine answers a ping within `timeout` seconds.

    With `wait_s`, and only where an engine is expected (`engine_expected`), pings again until
    `wait_s` seconds have passed: a busy dockerd on a loaded machine can miss one short ping.
    Where none is installed one probe says no at once. At least one ping is always made."""
    deadline = time.monotonic() + wait_s
    while True:
        if _pings(timeout):
            return True
        left = deadline - time.monotonic()
        if left <= 0 or not engine_expected():
            return False
        time.sleep(min(1.0, left))


def _pings(timeout: float) -> bool:
    try:
        client = make_client(timeout)
    except BackendError:
        return False
    try:
        return bool(client.ping())
    except Exception:  # any failure means "not usable": this is a probe
        return False
    finally:
        client.close()


def engine_expected() -> bool:
    """True when something says an engine should be there: DOCKER_HOST names one (a unix socket
    that exists, or any other address), or the default socket exists.

    Only then is it worth waiting for a slow engine; without one a single probe says "no"."""
    host = os.environ.get("DOCKER_HOST", "")
    if host:
        return not host.startswith("unix://") or Path(host[len("unix://"):]).exists()
    return Path(_docker().constants.DEFAULT_UNIX_SOCKET.removeprefix("http+unix://")).exists()


def image_exists(image: str, client: docker.DockerClient | None = None) -> bool:
    """True when `image` is present in the engine; False when it is not.

    Raises BackendError when the engine itself cannot be asked.
    """
    return image_config(image, client) is not None


def image_config(image: str, client: docker.DockerClient | None = None) -> dict[str, Any] | None:
    """The image's Config (USER, ENTRYPOINT...), or None when the engine has no such image.

    Raises BackendError when the engine itself cannot be asked.
    """
    docker = _docker()
    own = client is None
    client = client or make_client()
    try:
        return dict(client.images.get(image).attrs.get("Config") or {})
    except docker.errors.ImageNotFound:
        return None
    except (docker.errors.DockerException, *_requests_errors()) as exc:
        raise BackendError(f"cannot ask the Docker engine about image {image}: {exc}", hint=ENGINE_HINT) from exc
    finally:
        if own:
            client.close()


def remove_containers(label_filter: dict[str, str], client: docker.DockerClient | None = None) -> int:
    """Force-remove every container (running or not) carrying all these labels; return how many."""
    docker = _docker()
    own = client is None
    client = client or make_client()
    removed = 0
    try:
        labels = [f"{key}={value}" for key, value in label_filter.items()]
        try:
            found = client.containers.list(all=True, filters={"label": labels})
        except (docker.errors.DockerException, *_requests_errors()) as exc:
            raise BackendError(f"cannot list containers by label {labels}: {exc}", hint=ENGINE_HINT) from exc
        for container in found:
            try:
                container.remove(force=True)
                removed += 1
            except docker.errors.NotFound:
                pass  # already gone (auto-removed or removed concurrently)
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "already in progress" in str(exc):
                    continue  # someone else is removing it
                raise BackendError(f"cannot remove container {container.name}: {exc}") from exc
        return removed
    finally:
        if own:
            client.close()


def _as_root() -> bool:
    return not hasattr(os, "getuid") or os.getuid() == 0


def open_outputs_to(output_dir: Path, image_user: str) -> None:
    """As root, the container runs as the image's USER, which could not write to the
    root-owned outputs folder: a numeric USER (uid[:gid]) is given the folder; a named one
    cannot be resolved on this machine, so that one folder (only) is opened to everyone."""
    if not _as_root():
        return  # the container runs as the caller's uid:gid, the folder's owner
    user, _, group = image_user.partition(":")
    if user in ("", "0", "root"):
        return
    if user.isdigit() and (not group or group.isdigit()):
        os.chown(output_dir, int(user), int(group) if group else -1)
    else:
        os.chmod(output_dir, 0o777)


def container_name(run_id: str, task_id: str, attempt: int) -> str:
    """`pe-<run>-<task>-<attempt>`, made a valid Docker name; a hash suffix where it had to change."""
    raw = f"pe-{run_id}-{task_id}-{attempt}"
    name = _NAME_BAD.sub("-", raw)
    if name == raw and len(name) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{name[: _NAME_MAX - 9]}-{digest}"


class DockerAttempt:
    """One running container, its log followers, and the thread that waits for its exit code.

    The waiter is the only caller of `wait` on the engine; it drains the logs and removes the
    container before publishing the exit code, so when `wait` returns a code the log files are
    complete and the container is gone. With `remove_after_exit_code` it removes the container
    just after publishing the code instead: the VM worker writes the attempt's end meanwhile
    (each container has its own name, and the VM's removal takes any left behind).
    """

    def __init__(
        self, client: docker.DockerClient, container: Container, spec: AttemptSpec, memory: str | None = None,
        remove_after_exit_code: bool = False,
    ) -> None:
        self.client = client
        self.container = container
        self.name = container.name
        self.spec = spec
        self.memory = memory
        self.remove_after_exit_code = remove_after_exit_code
        self._reason: str | None = None
        self._done = threading.Event()
        self._exited = threading.Event()  # the engine reported the exit: the logs are final
        self._code: int | None = None
        self._kill_sent = False
        self._kill_lock = threading.Lock()
        self._finish_lock = threading.Lock()
        self._log_threads = [
            threading.Thread(target=self._follow, args=("stdout", spec.stdout_path), name=f"{self.name}-stdout", daemon=True),
            threading.Thread(target=self._follow, args=("stderr", spec.stderr_path), name=f"{self.name}-stderr", daemon=True),
        ]
        for thread in self._log_threads:
            thread.start()
        self._waiter = threading.Thread(target=self._wait_for_exit, name=f"{self.name}-wait", daemon=True)
        self._waiter.start()

    # --- the seam -------------------------------------------------------------------------

    def wait(self, timeout: float | None) -> int | None:
        if not self._done.wait(timeout):
            return None
        return self._code

    def join(self, timeout: float | None) -> None:
        """Until the waiter is done: the exit code published and the removal tried."""
        self._waiter.join(timeout)

    def exit_reason(self) -> str | None:
        """Why the container ended, when the exit code alone would mislead (an OOM kill is 137)."""
        return self._reason

    def killed(self) -> bool:
        # SIGKILL cannot be caught: a container that was still running when ours reached it
        # exits 137; one that had exited by itself keeps its own code, and is judged by it.
        return self._kill_sent and self._code == EXIT_KILLED

    def kill(self) -> None:
        docker = _docker()
        with self._kill_lock:
            if self._done.is_set():
                return
            self._kill_sent = True  # before the request: the waiter may publish the code first
            try:
                self.container.kill()
            except docker.errors.NotFound:
                pass  # already removed
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: not running any more, fine
                    self._note(f"kill failed: {exc}")
            except _requests_errors() as exc:
                self._note(f"kill failed: {exc}")
            # The waiter sees the exit, drains the logs and removes the container.
            if not self._done.wait(LOG_DRAIN_S + API_TIMEOUT_S):
                self._remove()  # the engine is stuck: remove by force, do not hang the caller
                self._finish(EXIT_KILLED)

    # --- internals ------------------------------------------------------------------------

    def _follow(self, stream: str, path: Path) -> None:
        """Copy one of the container's streams into `path` as it comes, byte for byte.

        A follow ends when the container stops, and the engine may end it before the last
        (unterminated) line reached the log: once the exit is known, read the log again and
        append whatever is past what was already written.
        """
        written = 0
        which = {"stdout": stream == "stdout", "stderr": stream == "stderr"}
        try:
            with open(path, "ab", buffering=0) as out:
                try:
                    for chunk in self.container.logs(stream=True, follow=True, **which):
                        out.write(chunk)
                        written += len(chunk)
                except Exception:  # the container vanished or the engine went away
                    pass
                if not self._exited.wait(LOG_DRAIN_S):
                    return
                skip = written
                for chunk in self.container.logs(stream=True, follow=False, **which):
                    if skip >= len(chunk):
                        skip -= len(chunk)
                        continue
                    out.write(chunk[skip:])
                    skip = 0
        except Exception:  # removed before the catch-up (killed): the log ends here
            pass

    def _wait_for_exit(self) -> None:
        docker = _docker()
        code: int | None = None
        gone_since: float | None = None
        while code is None:
            try:
                result = self.container.wait(timeout=WAIT_CHUNK_S)  # requests raises on timeout
                code = int(result.get("StatusCode", EXIT_ENGINE_ERROR))
                if result.get("Error"):
                    self._note(f"docker wait: {result['Error']}")
            except docker.errors.NotFound:
                code = EXIT_KILLED  # removed under our feet (e.g. remove_containers on SIGTERM)
            except (docker.errors.APIError, *_requests_errors()) as exc:
                # A read timeout is only "still running"; an engine that stays away is an error.
                try:
                    self.container.reload()
                    gone_since = None
                except docker.errors.NotFound:
                    code = EXIT_KILLED
                except Exception:
                    now = time.monotonic()
                    gone_since = gone_since or now
                    if now - gone_since > ENGINE_GONE_S:
                        self._note(f"lost the Docker engine while waiting: {exc}")
                        code = EXIT_ENGINE_ERROR
                    else:
                        time.sleep(1.0)
        self._exited.set()
        if code != 0:
            self._reason = self._oom_reason(code)
        for thread in self._log_threads:
            thread.join(LOG_DRAIN_S)
        if self.remove_after_exit_code:
            self._finish(code)
            self._remove(note=False)  # the logs are final now: a failure only leaves a container behind
        else:
            self._remove()
            self._finish(code)

    def _oom_reason(self, code: int) -> str | None:
        """The kernel's OOM killer shows only as 137: the engine's State.OOMKilled says which."""
        try:
            self.container.reload()
        except Exception:  # removed or engine gone: the exit code is all there is
            return None
        if not self.container.attrs.get("State", {}).get("OOMKilled"):
            return None
        limit = f"MEMORY={self.memory}" if self.memory else "no MEMORY limit: the machine ran out"
        if code == EXIT_KILLED:
            return f"killed: out of memory ({limit})"
        return f"exit code {code} after a process in the container was killed: out of memory ({limit})"

    def _finish(self, code: int) -> None:
        with self._finish_lock:  # the waiter and a stuck kill() may both get here
            if not self._done.is_set():
                self._code = code
                self._done.set()

    def _remove(self, note: bool = True) -> None:
        docker = _docker()
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if note and not (exc.status_code == 409 and "already in progress" in str(exc)):
                self._note(f"could not remove container {self.name}: {exc}")
        except _requests_errors() as exc:
            if note:
                self._note(f"could not remove container {self.name}: {exc}")

    def _note(self, message: str) -> None:
        """Engine trouble goes where the user looks: the attempt's stderr log."""
        try:
            with open(self.spec.stderr_path, "ab") as err:
                err.write(f"\n[parallel-engine] {message}\n".encode())
        except OSError:
            pass


class DockerRuntime:
    """Each attempt is a container of `image`; the task's argv is its command, as a list."""

    name = "docker"

    def __init__(
        self,
        image: str,
        network: str = "none",
        cpus: float | None = None,
        memory: str | None = None,
        labels: dict[str, str] | None = None,
        remove_after_exit_code: bool = False,
    ) -> None:
        """`remove_after_exit_code`: see DockerAttempt (the VM worker's choice)."""
        if network not in NETWORKS:
            raise ConfigError(
                f"DOCKER_NETWORK {network!r} is not supported",
                hint="use 'none' (the default) or 'host'; the bridge network stays off",
            )
        if cpus is not None and cpus <= 0:
            raise ConfigError(f"CPUS must be positive, got {cpus}")
        self.image = image
        self.network = network
        self.cpus = cpus
        self.memory = memory
        self.labels = dict(labels or {})
        self.remove_after_exit_code = remove_after_exit_code
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._image_user: str | None = None  # the image's USER, read once

    @property
    def client(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                self._client = make_client()
            return self._client

    def container_kwargs(self, spec: AttemptSpec) -> dict[str, Any]:
        """What `containers.create` gets for this attempt (exposed so tests can read it)."""
        env = {**spec.env, ENV_OUTPUT_DIR: CONTAINER_OUTPUT_DIR}
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": container_name(spec.run_id, spec.task_id, spec.attempt),
            "environment": env,
            "volumes": {str(Path(spec.output_dir).resolve()): {"bind": CONTAINER_OUTPUT_DIR, "mode": "rw"}},
            "network_mode": self.network,
            "labels": {
                **self.labels,
                LABEL_RUN: spec.run_id,
                LABEL_TASK: spec.task_id,
                LABEL_ATTEMPT: str(spec.attempt),
            },
            "detach": True,
            "stdin_open": False,
            "tty": False,
            "auto_remove": False,  # the exit code must be read first
            # readable on any engine setup, and byte for byte: json-file turns bytes that are not
            # UTF-8 into U+FFFD
            "log_config": {"type": "local", "config": {}},
        }
        if spec.command_override:
            if not spec.argv:
                raise BackendError(f"task {spec.task_id}: its command is empty")
            kwargs["entrypoint"] = [spec.argv[0]]
            kwargs["command"] = list(spec.argv[1:])
        else:
            kwargs["command"] = list(spec.argv)
        if self.cpus is not None:
            kwargs["nano_cpus"] = int(self.cpus * 1e9)
        if self.memory is not None:
            kwargs["mem_limit"] = self.memory
            kwargs["memswap_limit"] = self.memory  # MEMORY is the cap: no swap on top of it
        if not _as_root():
            kwargs["user"] = f"{os.getuid()}:{os.getgid()}"  # outputs belong to the user
        return kwargs

    def image_user(self) -> str:
        """The image's USER ('' when it runs as root); read from the engine once."""
        if self._image_user is None:
            config = image_config(self.image, self.client)
            if config is None:
                return ""  # `start` reports the missing image
            self._image_user = str(config.get("User") or "")
        return self._image_user

    def _open_outputs_to_image_user(self, output_dir: Path) -> None:
        open_outputs_to(output_dir, self.image_user())

    def start(self, spec: AttemptSpec) -> DockerAttempt:
        docker = _docker()
        kwargs = self.container_kwargs(spec)
        Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
        self._open_outputs_to_image_user(Path(spec.output_dir))
        for path in (spec.stdout_path, spec.stderr_path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(b"")  # exists from the start, like a process's log
        client = self.client
        try:
            container = client.containers.create(**kwargs)
        except docker.errors.ImageNotFound as exc:
            raise BackendError(
                f"task {spec.task_id}: image {self.image} not found in the Docker engine",
                hint="run `parallel-engine build` or set IMAGE to an image that exists",
            ) from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise BackendError(
                    f"task {spec.task_id}: a container named {kwargs['name']} already exists: {exc.explanation}",
                    hint=f"remove leftovers with `parallel-engine down {spec.run_id}` or `docker rm -f {kwargs['name']}`",
                ) from exc
            raise BackendError(f"task {spec.task_id}: Docker refused to create the container: {exc.explanation or exc}") from exc
        except (docker.errors.DockerException, *_requests_errors()) as exc:
            raise BackendError(f"task {spec.task_id}: the Docker engine failed: {exc}", hint=ENGINE_HINT) from exc
        try:
            container.start()
        except (docker.errors.DockerException, *_requests_errors()) as exc:
            try:
                container.remove(force=True)
            except Exception:
                pass
            detail = getattr(exc, "explanation", None) or exc
            raise BackendError(
                f"task {spec.task_id}: the container did not start: {detail}",
                hint="check the image's entrypoint and the task's command",
            ) from exc
        return DockerAttempt(client, container, spec, self.memory, self.remove_after_exit_code)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
