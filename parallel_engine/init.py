"""`parallel-engine init [DIR]`: a project that runs as it is, in one command, never overwriting.

It writes `.config.yaml` (local backend by default; `--gce` for Compute Engine), and the example
project this repository ships (`code/Dockerfile`, `code/main.py`, `code/params.csv`,
`code/.dockerignore`, `cloudbuild.yaml`; in the wheel as `parallel_engine/project_template/`),
so `init DIR && cd DIR && parallel-engine run code/params.csv` works at once.

The config's comments come from the key table (`config.describe_keys()`), so they cannot drift
from what the loader reads. With `--gce`, PROJECT_ID, ZONE, BUCKET, REGISTRY and IMAGE are filled
from what the user's credentials and gcloud's configuration files already know (read as files:
gcloud itself is never run, and no credentials are needed); what nobody knows is written as a
`<FILL IN: ...>` placeholder, which the config loader refuses, naming the key.
"""

from __future__ import annotations

import configparser
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import wrap
from typing import Any

import yaml

from parallel_engine.config import CONFIG_FILE_NAME, GCE_DEFAULT_QUOTA, KEYS, describe_keys, is_placeholder, placeholder
from parallel_engine.errors import ParallelEngineError

__all__ = ["TEMPLATE_FILES", "Created", "gcloud_properties", "init_project", "render_config", "template_dir"]

#: The example project, copied byte for byte (cloudbuild.yaml gets IMAGE as its default `_IMAGE`).
TEMPLATE_FILES = ("code/Dockerfile", "code/.dockerignore", "code/main.py", "code/params.csv", "cloudbuild.yaml")
#: The Artifact Registry repository the gce config names (the README's example).
REPOSITORY = "parallel-engine"
_WIDTH = 95  # of a comment line in .config.yaml


@dataclass(frozen=True)
class Filled:
    """A value init wrote into .config.yaml, and where it came from (shown to the user)."""

    value: Any
    source: str

    @property
    def known(self) -> bool:
        return not is_placeholder(self.value)


@dataclass
class Created:
    """What one `init` did: files created and kept (relative to the project folder), values filled."""

    folder: Path
    gce: bool
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    values: dict[str, Filled] = field(default_factory=dict)
    region: str | None = None  # gce: where the bucket and the registry go, when known
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report `init` prints: every file created or kept, each value and where it came from."""
        shown = [f"created  {self.folder / name}" for name in self.created]
        shown += [f"kept     {self.folder / name}  (it exists: not overwritten)" for name in self.kept]
        if self.gce:
            width = max(len(key) for key in self.values)
            for key, filled in self.values.items():
                shown.append(f"{key.ljust(width)}  {filled.value}  ({filled.source})")
            if CONFIG_FILE_NAME in self.kept:
                shown.append(f"{CONFIG_FILE_NAME} was kept: the values above are not in it")
        shown += [f"note: {note}" for note in self.notes]
        shown += self.next_steps()
        return shown

    def next_steps(self) -> list[str]:
        go = "" if self.folder == Path(".") else f"cd {self.folder} && "
        if not self.gce:
            run = f"next: {go}parallel-engine run code/params.csv"
            return [f"{run}   (processes; `parallel-engine build` first to run each task in a container)"]
        missing = [key for key, filled in self.values.items() if not filled.known]
        steps = []
        if missing and CONFIG_FILE_NAME in self.created:
            steps.append(f"next: replace the placeholders of {', '.join(missing)} in {self.folder / CONFIG_FILE_NAME} "
                         "(parallel-engine refuses to start until then)")
        project, bucket = self.values["PROJECT_ID"], self.values["BUCKET"]
        if self.region and project.known and bucket.known:
            steps.append(f"then, once: gcloud storage buckets create gs://{bucket.value} --project {project.value} "
                         f"--location {self.region}")
            steps.append(f"           gcloud artifacts repositories create {REPOSITORY} --project {project.value} "
                         f"--repository-format docker --location {self.region}")
        steps.append(f"then: {go}parallel-engine build && parallel-engine run code/params.csv")
        return steps


def init_project(folder: Path, gce: bool = False, environ: Mapping[str, str] | None = None) -> Created:
    """Write a project into `folder` (made if missing); a file that exists is kept as it is."""
    environ = os.environ if environ is None else environ
    folder = Path(folder)
    done = Created(folder, gce)
    name = _image_name(folder)
    if gce:
        done.values, done.region, done.notes = gce_values(name, environ)
    else:
        done.values = {"BACKEND": Filled("local", "this machine; `parallel-engine init --gce` writes one for VMs"),
                       "IMAGE": Filled(f"{name if name.endswith('job') else name + '-job'}:latest",
                                       "`parallel-engine build` builds code/ into it")}
    files = {CONFIG_FILE_NAME: render_config(done.values).encode()}
    source = template_dir()
    for relative in TEMPLATE_FILES:
        files[relative] = (source / relative).read_bytes()
    image = done.values["IMAGE"]
    if gce and image.known:
        files["cloudbuild.yaml"] = _with_image(files["cloudbuild.yaml"], str(image.value))
    for parent in sorted({(folder / relative).parent for relative in files}):  # all folders, then files
        _make_folder(parent)
    for relative, data in files.items():
        (done.created if _create(folder / relative, data) else done.kept).append(relative)
    return done


def template_dir() -> Path:
    """The example project: inside the package in a wheel, at the repository root in a checkout."""
    here = Path(__file__).resolve().parent
    candidates = (here / "project_template", here.parent)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in TEMPLATE_FILES):
            return candidate
    raise ParallelEngineError(
        f"cannot find the project template ({', '.join(TEMPLATE_FILES)}) in {candidates[0]} or {candidates[1]}",
        hint="reinstall parallel-engine: the wheel ships it as parallel_engine/project_template/",
    )


# -- .config.yaml ------------------------------------------------------------------------------
_HEADER = """\
# parallel-engine configuration, written by `parallel-engine init`.
# Every key is here, documented above its line: the first ones are this project's, the others
# are commented out, so their default applies (uncomment one to change it). A value can also
# come from the environment (PARALLEL_ENGINE_<KEY>) or the command line (--set KEY=VALUE),
# which win over this file. Durations are seconds, or like 90s, 10m, 2h, 1d."""
_PLACEHOLDERS = """\
# A <FILL IN: ...> value is a placeholder init could not fill: parallel-engine refuses to
# start until you replace it."""


def render_config(values: Mapping[str, Filled]) -> str:
    """The commented .config.yaml: `values` first (with where each came from), then every other
    key commented out with its default; each key's comment is its doc from the key table."""
    docs = {name: (default, doc) for name, default, doc in describe_keys()}
    out = [_HEADER]
    if any(not filled.known for filled in values.values()):
        out.append(_PLACEHOLDERS)
    out.append("\n# ==== this project " + "=" * (_WIDTH - 21))
    for name, filled in values.items():
        line = yaml.safe_dump({name: filled.value}, default_flow_style=False, width=1_000_000).rstrip("\n")
        out.append(_comment(name, *docs[name]) + f"\n# init: {filled.source}\n{line}")
    out.append("\n# ==== every other key: commented out, the default applies " + "=" * (_WIDTH - 61))
    for name, (default, doc) in docs.items():
        if name not in values:
            example = _example(name)
            out.append(_comment(name, default, doc) + f"\n# {name}:" + (f" {example}" if example else ""))
    return "\n\n".join(out) + "\n"


def _comment(name: str, default: str, doc: str) -> str:
    text = f"{doc[0].upper()}{doc[1:]}. Default: {default}."
    return "\n".join("# " + line for line in wrap(text, _WIDTH - 2, break_on_hyphens=False))


def _example(name: str) -> str:
    """The default written as a value, where one can be (uncommented, it changes nothing)."""
    key = KEYS[name]
    if key.default is None or key.default_doc is not None or key.default in ([], {}):
        return ""
    if isinstance(key.default, list):
        dumped: str = yaml.safe_dump(key.default, default_flow_style=True, width=1_000_000)
        return dumped.strip()
    return key.describe_default()


# -- --gce: what the credentials and gcloud know -----------------------------------------------
def gce_values(name: str, environ: Mapping[str, str]) -> tuple[dict[str, Filled], str | None, list[str]]:
    """BACKEND gce with PROJECT_ID, ZONE, BUCKET, REGISTRY, IMAGE from what is known, placeholders
    for the rest, and the seed's MACHINE_TYPE, VM_QUOTAS, NETWORK at their defaults; the region
    (when known) and notes on what could not be used."""
    gcloud, notes = gcloud_properties(environ)
    project = _credentials_project(notes) or gcloud.get("core/project")
    zone = gcloud.get("compute/zone")
    if zone is not None and not _valid("ZONE", zone.value):
        notes.append(f"ZONE {zone.value!r} ({zone.source}) is not a zone like europe-west1-b: not used")
        zone = None
    region = Filled(zone.value.rsplit("-", 1)[0], "ZONE's region") if zone else gcloud.get("compute/region")
    values = {
        "BACKEND": Filled("gce", "--gce"),
        "PROJECT_ID": project or Filled(placeholder("project id"), _UNKNOWN),
        "ZONE": zone or Filled(placeholder("zone, e.g. europe-west1-b"), _UNKNOWN),
        "MACHINE_TYPE": Filled(KEYS["MACHINE_TYPE"].default, "the default"),
        "VM_QUOTAS": Filled(GCE_DEFAULT_QUOTA, "the default on gce: raise it once your quota allows"),
        "NETWORK": Filled(KEYS["NETWORK"].default, "the default"),
    }
    bucket = f"{project.value}-{REPOSITORY}" if project else None
    values["BUCKET"] = (Filled(bucket, "from PROJECT_ID; init does not create it") if bucket and _valid("BUCKET", bucket)
                        else Filled(placeholder("bucket name"), _UNKNOWN))
    if project and region:  # a domain-scoped project (example.com:p) is example.com/p in a registry path
        registry = f"{region.value}-docker.pkg.dev/{project.value.replace(':', '/')}/{REPOSITORY}"
        values["REGISTRY"] = Filled(registry, f"from PROJECT_ID and {region.source}; init does not create it")
        values["IMAGE"] = Filled(f"{registry}/{name}:latest", "in REGISTRY; `parallel-engine build` pushes it")
    else:
        values["REGISTRY"] = Filled(placeholder("REGION-docker.pkg.dev/PROJECT/REPO"), _UNKNOWN)
        values["IMAGE"] = Filled(placeholder("REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG"), _UNKNOWN)
    return values, region.value if region else None, notes


_UNKNOWN = "placeholder: neither your credentials nor gcloud's configuration know it"


def gcloud_properties(environ: Mapping[str, str]) -> tuple[dict[str, Filled], list[str]]:
    """core/project, compute/zone and compute/region as gcloud would see them: its CLOUDSDK_<SECTION>_<NAME>
    variables, else the active configuration's file (INI), under $CLOUDSDK_CONFIG or ~/.config/gcloud."""
    found: dict[str, Filled] = {}
    notes: list[str] = []
    folder = _gcloud_folder(environ)
    active = environ.get("CLOUDSDK_ACTIVE_CONFIG_NAME", "").strip()
    if not active:
        try:
            active = (folder / "active_config").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            pass
    active = active or "default"
    path = folder / "configurations" / f"config_{active}"
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        with path.open(encoding="utf-8") as stream:
            parser.read_file(stream)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        notes.append(f"gcloud's configuration {path} could not be read ({_first_line(exc)}): not used")
    for prop in ("core/project", "compute/zone", "compute/region"):
        section, option = prop.split("/")
        variable = f"CLOUDSDK_{section}_{option}".upper()
        if environ.get(variable, "").strip():
            found[prop] = Filled(environ[variable].strip(), f"gcloud's {variable}")
        elif parser.get(section, option, fallback="").strip():
            found[prop] = Filled(parser.get(section, option).strip(), f"gcloud configuration {active!r}: {path}")
    return found, notes


def _gcloud_folder(environ: Mapping[str, str]) -> Path:
    """Where gcloud keeps its configuration (as google-auth and gcloud find it)."""
    if environ.get("CLOUDSDK_CONFIG"):
        return Path(environ["CLOUDSDK_CONFIG"]).expanduser()
    if os.name == "nt" and environ.get("APPDATA"):
        return Path(environ["APPDATA"]) / "gcloud"
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / ".config" / "gcloud"


def _credentials_project(notes: list[str]) -> Filled | None:
    """The project Application Default Credentials carry (google.auth.default's), if any.
    No credentials, or unreadable ones, are a note: init needs none."""
    from parallel_engine.config import Config
    from parallel_engine.backends.gce.credentials import google_auth

    try:
        with warnings.catch_warnings():  # google-auth's advice about user credentials is not ours to show
            warnings.simplefilter("ignore")
            auth = google_auth(Config())
    except ParallelEngineError as exc:
        notes.append(f"no project from your credentials: {exc.message}")
        return None
    except Exception as exc:  # noqa: BLE001 - init needs no credentials: what fails here leaves a placeholder
        notes.append(f"no project from your credentials: {type(exc).__name__}: {_first_line(exc)}")
        return None
    return Filled(auth.project, f"your credentials: {auth.source}") if auth.project else None


def _valid(key: str, value: Any) -> bool:
    try:
        KEYS[key].type(value)
    except ValueError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- files -------------------------------------------------------------------------------------
def _image_name(folder: Path) -> str:
    """The project folder's name as an image name component (lower case, digits, dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", folder.resolve().name.lower()).strip("-")[:50] or "app"


def _with_image(cloudbuild: bytes, image: str) -> bytes:
    """cloudbuild.yaml with IMAGE as `_IMAGE`'s default, so a plain `gcloud builds submit` pushes it."""
    text = cloudbuild.decode()
    return re.sub(r"(?m)^(  _IMAGE: ).*$", lambda m: m.group(1) + image, text, count=1).encode()


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ParallelEngineError(f"{path} exists and is not a folder", hint="pick another DIR, or move it away") from None
    except OSError as exc:
        raise ParallelEngineError(f"cannot create the folder {path}: {exc.strerror or exc}",
                                  hint="pick a DIR you can write, or fix its permissions") from None


def _create(target: Path, data: bytes) -> bool:
    """Write `target` whole, only if nothing is there (not even a dangling link): the data goes to
    a file beside it, which is then hard-linked in place (the link refuses any existing name), so
    the target is never half-written and never replaced. False if it existed."""
    try:
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".init")
    except OSError as exc:
        raise ParallelEngineError(f"cannot write in {target.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.link(temporary, target)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ParallelEngineError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        os.unlink(temporary)
    return True
