"""`parallel-engine init [DIR]`: a project that runs as it is, never a file overwritten, a config
whose comments are the key table's, and `--gce` filled from what credentials and gcloud know."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from parallel_engine.config import KEYS, Config, describe_keys, load_config, placeholder
from parallel_engine.errors import ConfigError
from parallel_engine.init import TEMPLATE_FILES, Filled, gcloud_properties, render_config, template_dir
from tests.helpers import ROOT, cli, no_credentials_env, read_json, run_id_of, service_account_key

WRITTEN = (".config.yaml", *TEMPLATE_FILES)
FILLED_ON_GCE = ("PROJECT_ID", "ZONE", "BUCKET", "REGISTRY", "IMAGE")


def init(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`parallel-engine init` on a machine where nobody logged in to Google (unless `env` says)."""
    (cwd / "home").mkdir(exist_ok=True)
    done = cli("init", *args, cwd=cwd, env={**no_credentials_env(cwd / "home"), **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def listed(done: subprocess.CompletedProcess[str], verb: str) -> list[str]:
    """The paths `init` printed as created or kept."""
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith(verb + " ")]


def assert_every_task_succeeded_and_wrote_its_output(project: Path, run: subprocess.CompletedProcess[str]) -> None:
    assert run.returncode == 0, run.stdout + run.stderr
    run_folder = project / ".parallel-engine" / "runs" / run_id_of(run)
    params = list(csv.DictReader(open(project / "code" / "params.csv", newline="")))
    assert len(params) == 12
    for task_id, row in enumerate(params, start=1):
        attempt = run_folder / "tasks" / str(task_id) / "1"
        assert read_json(attempt / "status.json")["state"] == "succeeded"
        summary = read_json(attempt / "outputs" / "summary.json")
        assert (summary["dataset"], summary["project"], summary["var"]) == (row["dataset"], row["project"], int(row["var"]))


# -- a working project ---------------------------------------------------------------------------
def test_init_then_run_in_the_new_project_succeeds_every_task_and_writes_its_output(tmp_path: Path) -> None:
    name = f"fresh-{os.getpid()}"  # its IMAGE (fresh-<pid>-job:latest) is never built: processes run
    done = init(tmp_path, name)
    assert listed(done, "created") == [f"{name}/{path}" for path in WRITTEN]
    assert listed(done, "kept") == []
    assert f"next: cd {name} && parallel-engine run code/params.csv" in done.stdout
    for path in TEMPLATE_FILES:
        assert (tmp_path / name / path).read_bytes() == (ROOT / path).read_bytes()
    run = cli("run", "code/params.csv", cwd=tmp_path / name, timeout=300)
    assert "runtime: process" in run.stderr
    assert_every_task_succeeded_and_wrote_its_output(tmp_path / name, run)


@pytest.mark.docker
def test_init_then_build_then_run_runs_every_task_in_a_container(tmp_path: Path, docker_engine: Any, base_image: str) -> None:
    name = f"boxed-{os.getpid()}"
    image = f"{name}-job:latest"
    init(tmp_path, name)
    project = tmp_path / name
    try:
        built = cli("build", cwd=project, timeout=600)
        assert built.returncode == 0, built.stdout + built.stderr
        assert f"built {image}" in built.stdout
        run = cli("run", "code/params.csv", "-j", "2", cwd=project, timeout=600)
        assert f"runtime: docker: engine answers and image {image} exists" in run.stderr
        assert_every_task_succeeded_and_wrote_its_output(project, run)
    finally:
        docker_engine.images.remove(image, force=True)


def test_init_without_dir_writes_into_the_current_folder_and_names_the_image_after_it(tmp_path: Path) -> None:
    here = tmp_path / "Sweep Job"
    here.mkdir()
    done = init(here)
    assert listed(done, "created") == list(WRITTEN)
    assert "next: parallel-engine run code/params.csv" in done.stdout
    assert load_config(here / ".config.yaml", environ={}).image == "sweep-job:latest"


# -- never overwrites ------------------------------------------------------------------------------
def test_init_never_overwrites_a_file_and_lists_what_it_kept(tmp_path: Path) -> None:
    project = tmp_path / "mine"
    (project / "code").mkdir(parents=True)
    (project / ".config.yaml").write_bytes(b"BACKEND: local\nRETRIES: 2\n")
    (project / "code" / "main.py").write_bytes(b"print('my own program')\n\xff")
    (project / "cloudbuild.yaml").symlink_to(project / "nowhere.yaml")  # a dangling link is a file too
    (project / "code" / "params.csv").mkdir()  # so is a folder in the way
    before = {path: (p.lstat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
              for path in WRITTEN if (p := project / path).is_symlink() or p.exists()}

    done = init(tmp_path, "mine")

    kept = [".config.yaml", "code/main.py", "code/params.csv", "cloudbuild.yaml"]
    assert listed(done, "kept") == [f"mine/{path}" for path in kept]
    assert listed(done, "created") == ["mine/code/Dockerfile", "mine/code/.dockerignore"]
    after = {path: (p.lstat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
             for path in kept if (p := project / path)}
    assert after == before
    assert not (project / "nowhere.yaml").exists()  # the link was not followed
    assert sorted(p.name for p in project.rglob("*.init")) == []  # no temporary file left

    again = init(tmp_path, "mine")
    assert listed(again, "created") == [] and len(listed(again, "kept")) == len(WRITTEN)


def test_init_into_a_file_is_one_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file\n")
    done = cli("init", "taken", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "error: taken exists and is not a folder"
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "code").write_text("not a folder\n")
    done = cli("init", "proj", cwd=tmp_path)
    assert done.returncode == 2 and "error: proj/code exists and is not a folder" in done.stderr
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["code"]  # not even .config.yaml


# -- the config's comments are the key table's -----------------------------------------------------
def key_blocks(text: str) -> dict[str, tuple[str, str]]:
    """Per key: its line (`KEY: v` or `# KEY: v`) and the comment above it joined into one text."""
    blocks: dict[str, tuple[str, str]] = {}
    comment: list[str] = []
    for line in text.splitlines():
        match = re.fullmatch(r"(# )?([A-Z_]+):( .*)?", line)
        if match and match.group(2) in KEYS:
            assert match.group(2) not in blocks, f"{match.group(2)} twice"
            blocks[match.group(2)] = (line, " ".join(comment))
            comment = []
        elif line.startswith("# "):
            comment.append(line[2:])
        else:
            comment = []
    return blocks


@pytest.mark.parametrize("gce", [False, True])
def test_every_key_is_in_the_config_once_under_its_doc_and_default(tmp_path: Path, gce: bool) -> None:
    init(tmp_path, "proj", *(["--gce"] if gce else []))
    blocks = key_blocks((tmp_path / "proj" / ".config.yaml").read_text())
    assert set(blocks) == set(KEYS)  # each once: key_blocks refuses a second line
    for name, default, doc in describe_keys():
        assert f"{doc[0].upper()}{doc[1:]}. Default: {default}." in blocks[name][1], name


def test_the_local_config_loads_and_uncommenting_every_other_key_keeps_its_default(tmp_path: Path) -> None:
    init(tmp_path, "proj")
    path = tmp_path / "proj" / ".config.yaml"
    config = load_config(path, environ={})
    assert (config.backend, config.image) == ("local", "proj-job:latest")
    assert {name for name in KEYS if config.origin(name) != "default"} == {"BACKEND", "IMAGE"}
    uncommented = tmp_path / "all.yaml"
    uncommented.write_text(re.sub(r"(?m)^# ([A-Z_]+:)", r"\1", path.read_text()))
    every = load_config(uncommented, environ={})
    defaults = Config()
    for name in KEYS:
        if name not in ("BACKEND", "IMAGE"):
            assert every.get(name) == defaults.get(name), name
    concrete = {k for k, key in KEYS.items() if key.default not in (None, [], {}) and key.default_doc is None}
    assert {k for k in KEYS if every.origin(k) != "default"} == concrete | {"IMAGE"}  # each shows its default


# -- --gce -------------------------------------------------------------------------------------------
def gcloud_folder(home: Path, active: str = "work", **sections: dict[str, str]) -> Path:
    """A gcloud configuration folder as gcloud writes it: active_config and configurations/config_<name>."""
    folder = home / "gcloud"
    (folder / "configurations").mkdir(parents=True)
    (folder / "active_config").write_text(active)
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
                   for section, values in sections.items())
    (folder / "configurations" / f"config_{active}").write_text(text)
    (folder / "configurations" / "config_default").write_text("[core]\nproject = not-the-active-one\n")
    return folder


def test_gce_fills_project_zone_bucket_registry_image_from_gcloud_config(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    gcloud_folder(tmp_path / "home", core={"account": "me@example.com", "project": "my-proj"},
                  compute={"zone": "europe-west4-a", "region": "europe-west4"})
    done = init(tmp_path, "proj", "--gce")
    config = load_config(tmp_path / "proj" / ".config.yaml", environ={})  # no placeholder left: it loads
    registry = "europe-west4-docker.pkg.dev/my-proj/parallel-engine"
    assert (config.backend, config.project_id, config.zone, config.bucket, config.registry, config.image) == (
        "gce", "my-proj", "europe-west4-a", "my-proj-parallel-engine", registry, f"{registry}/proj:latest")
    assert (config.machine_type, config.vm_quotas, config.network) == ("n1-standard-1", 8, "default")
    assert re.search(r"^PROJECT_ID +my-proj +\(gcloud configuration 'work': .*config_work\)$", done.stdout, re.M)
    assert "no project from your credentials: no Google credentials found" in done.stdout
    assert "gcloud artifacts repositories create parallel-engine --project my-proj" in done.stdout
    cloudbuild = yaml.safe_load((tmp_path / "proj" / "cloudbuild.yaml").read_text())
    assert cloudbuild["substitutions"]["_IMAGE"] == config.image  # a plain `gcloud builds submit` pushes it


def test_gce_takes_the_project_of_the_credentials_first(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    gcloud_folder(tmp_path / "home", core={"project": "gcloud-proj"}, compute={"region": "us-east1"})
    key = service_account_key(tmp_path, project="key-project")
    done = init(tmp_path, "proj", "--gce", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    text = (tmp_path / "proj" / ".config.yaml").read_text()
    assert "\nPROJECT_ID: key-project\n" in text
    assert "\nREGISTRY: us-east1-docker.pkg.dev/key-project/parallel-engine\n" in text  # region from gcloud
    assert f"your credentials: Application Default Credentials from {key}" in done.stdout
    assert "\nZONE: '<FILL IN: " in text  # gcloud knew no zone


def test_gce_with_nothing_known_writes_placeholders_that_run_refuses_naming_each_key(tmp_path: Path) -> None:
    done = init(tmp_path, "proj", "--gce")
    assert "no project from your credentials: no Google credentials found" in done.stdout
    assert f"replace the placeholders of {', '.join(FILLED_ON_GCE)} in proj/.config.yaml" in done.stdout
    run = cli("run", "code/params.csv", cwd=tmp_path / "proj", env=no_credentials_env(tmp_path / "home"))
    assert run.returncode == 2, run.stdout + run.stderr
    for key in FILLED_ON_GCE:
        assert re.search(rf"^  {key} in \S+/\.config\.yaml \(line \d+\) is still the placeholder '<FILL IN: "
                         rf"[^\n]*that `parallel-engine init` wrote: replace it with your value$", run.stderr, re.M), key
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "proj" / ".parallel-engine").exists()


def test_a_placeholder_is_refused_from_any_layer_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^REGISTRY from flag --registry is still the placeholder"):
        load_config(None, flags={"REGISTRY": placeholder("registry")}, environ={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"^IMAGE from environment PARALLEL_ENGINE_IMAGE is still the placeholder"):
        load_config(None, environ={"PARALLEL_ENGINE_IMAGE": f"{placeholder('registry')}/app:1"}, cwd=tmp_path)
    assert load_config(None, flags={"ARGS_TEMPLATE": "<{x}>"}, environ={}, cwd=tmp_path).args_template == "<{x}>"


def test_gcloud_properties_follow_gcloud_environment_variables_over_its_files(tmp_path: Path) -> None:
    folder = gcloud_folder(tmp_path, core={"project": "from-file"}, compute={"zone": "europe-west1-b"})
    environ = {"CLOUDSDK_CONFIG": str(folder), "CLOUDSDK_CORE_PROJECT": "from-env"}
    found, notes = gcloud_properties(environ)
    assert (found["core/project"].value, found["compute/zone"].value, notes) == ("from-env", "europe-west1-b", [])
    found, _ = gcloud_properties({**environ, "CLOUDSDK_ACTIVE_CONFIG_NAME": "default"})
    assert found["core/project"].value == "from-env" and "compute/zone" not in found
    (folder / "configurations" / "config_work").write_bytes(b"project = no section\n")
    found, notes = gcloud_properties({"CLOUDSDK_CONFIG": str(folder)})
    assert found == {} and len(notes) == 1 and "config_work could not be read" in notes[0]


def test_a_bad_gcloud_zone_is_not_used_and_said(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    gcloud_folder(tmp_path / "home", core={"project": "p-1234"}, compute={"zone": "Europe West"})
    done = init(tmp_path, "proj", "--gce")
    assert "note: ZONE 'Europe West' (gcloud configuration 'work'" in done.stdout
    assert "\nZONE: '<FILL IN: " in (tmp_path / "proj" / ".config.yaml").read_text()


# -- shipped in the wheel ----------------------------------------------------------------------------
def test_every_template_file_is_shipped_in_the_wheel() -> None:
    force = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert {force[path] for path in TEMPLATE_FILES} == {f"parallel_engine/project_template/{p}" for p in TEMPLATE_FILES}
    assert template_dir() == ROOT  # in a checkout: the repository's own example


def test_init_from_the_built_wheel_copies_the_template_inside_the_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = "import json, sys; from parallel_engine.init import template_dir; print(json.dumps(str(template_dir())))"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, check=True).stdout
    assert Path(json.loads(where)) == tmp_path / "site" / "parallel_engine" / "project_template"
    for path in TEMPLATE_FILES:
        assert (tmp_path / "site" / "parallel_engine" / "project_template" / path).read_bytes() == (ROOT / path).read_bytes()


def test_render_config_quotes_what_yaml_would_misread() -> None:
    values = {"ARGS_TEMPLATE": "--x {x}: y # z", "LABELS": {"team": "data"}}
    text = render_config({k: Filled(v, "test") for k, v in values.items()})
    assert yaml.safe_load(text) == values
