"""Google credentials without Google: what every gce command says when they are missing or broken,
what needs none, where the project comes from, and that the product has one way to get them.

These run offline: loading a key or an ADC file calls nobody. The flows that do call (token fetch,
refresh, revocation, 401, 403) run against the emulated cloud in tests/emulator/test_gce_auth.py.
"""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from parallel_engine.backends.gce.credentials import (
    ProjectMismatchWarning,
    google_auth,
    google_project,
)
from parallel_engine.config import load_config
from parallel_engine.errors import ConfigError, CredentialsError
from parallel_engine.worker.image import tag as worker_tag
from tests.helpers import ROOT, cli, no_credentials_env, service_account_key

IMAGE = "europe-west1-docker.pkg.dev/proj/repo/app:1"
PINNED = "europe-west1-docker.pkg.dev/proj/repo/app@sha256:" + "ab" * 32
GCE = {"BACKEND": "gce", "PROJECT_ID": "my-project", "ZONE": "europe-west1-b", "BUCKET": "my-bucket",
       "IMAGE": IMAGE, "STORAGE_ENDPOINT": "http://127.0.0.1:9", "COMPUTE_ENDPOINT": "http://127.0.0.1:9",
       "CLOUDBUILD_ENDPOINT": "http://127.0.0.1:9"}  # fmt: skip
NO_LOGIN = "gcloud auth application-default login"


@pytest.fixture
def gce_dir(tmp_path: Path) -> Path:
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(GCE))
    (tmp_path / "params.csv").write_text("x\n1\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (tmp_path / "cloudbuild.yaml").write_text((ROOT / "cloudbuild.yaml").read_text())
    (tmp_path / "home").mkdir()
    return tmp_path


def run_cli(folder: Path, *args: str, **env: str) -> Any:
    return cli(*args, cwd=folder, env={**no_credentials_env(folder / "home"), **env})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


GCE_COMMANDS = {
    "run": ["run", "params.csv"],
    "status": ["status", "some-run"],
    "runs": ["runs"],
    "build": ["build"],
    "collect": ["collect", "some-run"],
    "logs": ["logs", "some-run", "t1"],
    "down": ["down", "some-run"],
}


@pytest.mark.parametrize("command", list(GCE_COMMANDS))
def test_every_gce_command_without_credentials_says_how_to_log_in_and_exits_2(gce_dir: Path, command: str) -> None:
    done = run_cli(gce_dir, *GCE_COMMANDS[command])
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert "no Google credentials found" in line
    assert NO_LOGIN in done.stderr and "CREDENTIALS_FILE" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_python_api_raises_the_same_credentials_error(gce_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import parallel_engine as pe

    for key, value in no_credentials_env(gce_dir / "home").items():
        monkeypatch.setenv(key, value) if value else monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr("google.auth.compute_engine._metadata._NO_GCE_CHECK", True)
    config = load_config(gce_dir / ".config.yaml", environ={})
    with pytest.raises(CredentialsError, match="no Google credentials found") as raised:
        pe.list_runs(config)
    assert raised.value.exit_code == 2 and raised.value.hint is not None and NO_LOGIN in raised.value.hint
    with pytest.raises(CredentialsError, match="no Google credentials found"):
        pe.run(gce_dir / "params.csv", config=config)


def test_render_of_a_pinned_image_needs_no_credentials(gce_dir: Path) -> None:
    done = run_cli(gce_dir, "render", "--worker", "--run-id", "run-1", "--set", f"IMAGE={PINNED}")
    assert done.returncode == 0, done.stderr
    assert f"PE_IMAGE={PINNED}\n" in done.stdout and "is rendered as given" not in done.stderr
    # The worker image's digest is in the bucket: shown by its tag, with what `run` would pin.
    worker = f"{PINNED.split('/app@')[0]}/parallel-engine-worker:{worker_tag()}"
    assert f"PE_WORKER_IMAGE={worker}\n" in done.stdout
    assert f"note: the worker image is rendered as {worker}: `run` pins the digest" in done.stderr


@pytest.mark.parametrize("command", [["render", "--worker", "--run-id", "run-1"], ["build"]])
def test_a_docker_hub_image_without_registry_is_refused_naming_registry(gce_dir: Path, command: list[str]) -> None:
    """The worker image goes beside IMAGE: a Docker Hub IMAGE has no repository the VMs could pull
    it from (it was rendered as "/parallel-engine-worker:..."), so REGISTRY must say where."""
    done = run_cli(gce_dir, *command, "--set", "IMAGE=python:3.11-slim")
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert "IMAGE python:3.11-slim is a Docker Hub image, and REGISTRY is not set" in line
    assert "set REGISTRY to a repository the VMs can pull from" in done.stderr and "Traceback" not in done.stderr
    with_registry = run_cli(gce_dir, "render", "--worker", "--run-id", "run-1", "--set", "IMAGE=python:3.11-slim",
                            "--set", "REGISTRY=europe-west1-docker.pkg.dev/proj/repo")
    assert with_registry.returncode == 0, with_registry.stderr
    assert f"PE_WORKER_IMAGE=europe-west1-docker.pkg.dev/proj/repo/parallel-engine-worker:{worker_tag()}\n" in with_registry.stdout


def test_render_of_an_unpinned_image_without_credentials_renders_it_as_given_and_says_so(gce_dir: Path) -> None:
    done = run_cli(gce_dir, "render", "--worker", "--run-id", "run-1")
    assert done.returncode == 0, done.stderr
    assert f"PE_IMAGE={IMAGE}\n" in done.stdout
    assert "`run` would pin it to the digest of the last `parallel-engine build`" in done.stderr
    assert "note: the worker image is rendered as " in done.stderr
    assert "no Google credentials found" in done.stderr


def test_help_and_config_errors_need_no_credentials(gce_dir: Path) -> None:
    assert run_cli(gce_dir, "--help").returncode == 0
    assert run_cli(gce_dir, "run", "--help").returncode == 0
    done = run_cli(gce_dir, "status", "some-run", "--set", "ZONE=nowhere")
    assert done.returncode == 2 and "ZONE from --set ZONE must be a zone" in done.stderr
    assert "credentials" not in done.stderr


# -- CREDENTIALS_FILE ----------------------------------------------------------------------------
def adc_file(folder: Path) -> Path:
    path = folder / "adc.json"
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "c.apps.googleusercontent.com",
                                "client_secret": "s", "refresh_token": "1//r"}))  # fmt: skip
    return path


BROKEN_FILES = {
    "missing": (None, "cannot be read: No such file or directory"),
    "not JSON": ("{not json", "not JSON"),
    "no type": ('{"client_id": "x"}', 'it has no "type"'),
    "another type": ('{"type": "external_account"}', "its type is 'external_account'"),
    "key without its fields": ('{"type": "service_account", "project_id": "p"}', "is not a valid service_account file"),
    "ADC file without its fields": ('{"type": "authorized_user"}', "is not a valid authorized_user file"),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_an_unreadable_or_malformed_credentials_file_is_one_line_naming_it(gce_dir: Path, case: str) -> None:
    content, expected = BROKEN_FILES[case]
    path = gce_dir / "creds.json"
    if content is not None:
        path.write_text(content)
    done = run_cli(gce_dir, "runs", "--set", f"CREDENTIALS_FILE={path}")
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert f"CREDENTIALS_FILE {path} (--set CREDENTIALS_FILE)" in line and expected in line
    assert "hint: point CREDENTIALS_FILE at a service-account key" in done.stderr and "Traceback" not in done.stderr


def test_a_broken_google_application_credentials_file_is_named(gce_dir: Path) -> None:
    path = gce_dir / "gac.json"
    path.write_text("[]")
    done = run_cli(gce_dir, "runs", GOOGLE_APPLICATION_CREDENTIALS=str(path))
    assert done.returncode == 2
    (line,) = error_lines(done.stderr)
    assert f"GOOGLE_APPLICATION_CREDENTIALS {path}" in line and 'it has no "type"' in line


def config_with(tmp_path: Path, **keys: Any) -> Any:
    flags = {k: v for k, v in {**GCE, **keys}.items() if v is not None}
    return load_config(None, flags=flags, environ={}, cwd=tmp_path)


def test_project_id_may_be_left_out_when_the_key_carries_one(tmp_path: Path) -> None:
    key = service_account_key(tmp_path, "key-project")
    config = config_with(tmp_path, PROJECT_ID=None, CREDENTIALS_FILE=str(key))
    assert config.project_id is None
    assert google_project(config) == "key-project"


def test_without_project_id_and_a_project_in_the_credentials_project_id_is_asked_for(tmp_path: Path) -> None:
    config = config_with(tmp_path, PROJECT_ID=None, CREDENTIALS_FILE=str(adc_file(tmp_path)))
    with pytest.raises(ConfigError, match="PROJECT_ID is required for the gce backend: your credentials") as raised:
        google_project(config)
    assert raised.value.hint is not None and "PARALLEL_ENGINE_PROJECT_ID" in raised.value.hint


def test_a_project_id_other_than_the_credentials_project_is_shown_once(tmp_path: Path) -> None:
    key = service_account_key(tmp_path, "key-project")
    config = config_with(tmp_path, PROJECT_ID="other-project", CREDENTIALS_FILE=str(key))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert google_project(config) == "other-project"
        google_auth(config)
        google_auth(config_with(tmp_path, PROJECT_ID="other-project", CREDENTIALS_FILE=str(key)))
    mismatches = [w for w in seen if issubclass(w.category, ProjectMismatchWarning)]
    assert len(mismatches) == 1
    assert "PROJECT_ID is other-project" in str(mismatches[0].message)
    assert "belong to project key-project: using other-project" in str(mismatches[0].message)


def test_credentials_load_once_and_again_when_the_file_changes(tmp_path: Path) -> None:
    key = service_account_key(tmp_path, "first")
    config = config_with(tmp_path, PROJECT_ID=None, CREDENTIALS_FILE=str(key))
    first = google_auth(config)
    assert google_auth(config) is first  # every client of a command shares one
    service_account_key(tmp_path, "second-project")  # a new key in the same place
    assert google_auth(config).project == "second-project"


def test_token_uri_is_where_the_credentials_refresh(tmp_path: Path) -> None:
    config = config_with(tmp_path, CREDENTIALS_FILE=str(adc_file(tmp_path)), TOKEN_URI="http://127.0.0.1:9/token")
    assert google_auth(config).credentials.token_uri == "http://127.0.0.1:9/token"
    assert google_auth(config_with(tmp_path, CREDENTIALS_FILE=str(adc_file(tmp_path)))).credentials.token_uri == (
        "https://oauth2.googleapis.com/token")  # fmt: skip


# -- one way to get credentials --------------------------------------------------------------------
def product_modules() -> list[Path]:
    package = ROOT / "parallel_engine"
    return [p for p in package.rglob("*.py") if package / "emulator" not in p.parents]


def test_no_product_module_uses_anonymous_credentials_or_asks_whether_it_talks_to_the_emulator() -> None:
    for path in product_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)
                 for alias in node.names}  # fmt: skip
        attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert "AnonymousCredentials" not in names | attributes, path
        assert "hostname" not in attributes and "is_emulated" not in names | attributes, path  # "is it loopback?"
        compared = {c.value for node in ast.walk(tree) if isinstance(node, ast.Compare)
                    for c in ast.walk(node) if isinstance(c, ast.Constant)}  # fmt: skip
        assert not compared & {"127.0.0.1", "::1"}, path
