"""Cloud Build's checks on a Build, and its substitutions, as the service applies them.

Pure functions (no I/O), so the rules can be tested without Docker. The rules and messages follow
what Google's service answers (the same checks as Google's cloud-build-local `validate` and `subst`
packages): a Build that Google would refuse is refused here with 400 INVALID_ARGUMENT and a message
in Google's words, e.g.

    key "_UNUSED" in the substitution data is not matched in the template
    substitution key "TAG" does not respect format "^_[A-Z0-9_]+$" and is not an overridable built-in substitutions
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_TIMEOUT_S = 24 * 3600
DEFAULT_TIMEOUT_S = 600
DEFAULT_QUEUE_TTL_S = 3600
MAX_STEPS = 100
MAX_STEP_NAME = 1000
MAX_ARGS = 100
MAX_ARG_LENGTH = 4000
MAX_DIR_LENGTH = 1000
MAX_ENVS = 100
MAX_IMAGES = 100
MAX_IMAGE_LENGTH = 1000
MAX_SUBSTITUTIONS = 100
MAX_SUBST_KEY = 100
MAX_SUBST_VALUE = 4000
MAX_TAGS = 64
START_STEP = "-"

USER_KEY = re.compile(r"^_[A-Z0-9_]+$")
USER_KEY_TEXT = "^_[A-Z0-9_]+$"
#: Built-in substitutions; True when `substitutions` may set it (as `gcloud builds submit --substitutions` may).
BUILT_INS: dict[str, bool] = {
    "PROJECT_ID": False,
    "BUILD_ID": False,
    "PROJECT_NUMBER": False,
    "LOCATION": False,
    "TRIGGER_NAME": True,
    "COMMIT_SHA": True,
    "REVISION_ID": True,
    "SHORT_SHA": True,
    "REPO_NAME": True,
    "REPO_FULL_NAME": True,
    "BRANCH_NAME": True,
    "TAG_NAME": True,
    "REF_NAME": True,
    "TRIGGER_BUILD_CONFIG_PATH": True,
    "SERVICE_ACCOUNT_EMAIL": True,
    "SERVICE_ACCOUNT": True,
}
_KEY = r"([A-Z_][A-Z0-9_]*)"
_PARAMETER = re.compile(r"\$(?:\{" + _KEY + r"\}|" + _KEY + r")")

# Docker image references (distribution's grammar), which Google applies to `images` and step names.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_BUILD_TAG = re.compile(rf"^{_TAG}$")
_DURATION = re.compile(r"^(-?\d+)(?:\.(\d{1,9}))?s$")

# -- the Build resource's fields (json names of google.devtools.cloudbuild.v1), for "Unknown name" ----------
_ANY = "any"  # a field whose inside is not checked here
_STR, _INT, _BOOL, _STRS, _INTS, _MAP = "string", "int", "bool", "strings", "ints", "map"
_STORAGE_SOURCE = {"bucket": _STR, "object": _STR, "generation": _INT, "sourceFetcher": _ANY}
_SOURCE = {
    "storageSource": _STORAGE_SOURCE,
    "repoSource": _ANY,
    "gitSource": _ANY,
    "storageSourceManifest": _ANY,
    "connectedRepository": _ANY,
}
_STEP = {
    "name": _STR, "env": _STRS, "args": _STRS, "dir": _STR, "id": _STR, "waitFor": _STRS,
    "entrypoint": _STR, "secretEnv": _STRS, "volumes": _ANY, "timing": _ANY, "pullTiming": _ANY,
    "timeout": _STR, "status": _ANY, "allowFailure": _BOOL, "exitCode": _INT, "allowExitCodes": _INTS,
    "script": _STR, "automapSubstitutions": _BOOL,
}  # fmt: skip
_OPTIONS = {
    name: _ANY
    for name in (
        "sourceProvenanceHash", "requestedVerifyOption", "machineType", "diskSizeGb", "substitutionOption",
        "dynamicSubstitutions", "automapSubstitutions", "logStreamingOption", "workerPool", "pool", "logging",
        "env", "secretEnv", "volumes", "defaultLogsBucketBehavior", "enableStructuredLogging",
        "workerRelease", "resolvedWorkerRelease",
    )
}  # fmt: skip
_OPTIONS["env"] = _STRS
BUILD_FIELDS: dict[str, Any] = {
    "name": _STR, "id": _STR, "projectId": _STR, "status": _ANY, "statusDetail": _STR, "source": _SOURCE,
    "steps": [_STEP], "results": _ANY, "createTime": _ANY, "startTime": _ANY, "finishTime": _ANY,
    "timeout": _STR, "images": _STRS, "queueTtl": _STR, "artifacts": _ANY, "logsBucket": _STR,
    "sourceProvenance": _ANY, "buildTriggerId": _STR, "options": _OPTIONS, "logUrl": _STR,
    "substitutions": _MAP, "tags": _STRS, "secrets": _ANY, "timing": _ANY, "approval": _ANY,
    "serviceAccount": _STR, "availableSecrets": _ANY, "warnings": _ANY, "gitConfig": _ANY,
    "failureInfo": _ANY, "dependencies": _ANY,
}  # fmt: skip
#: Output-only fields: what a caller sends there is dropped, as Google does.
OUTPUT_ONLY = (
    "name", "id", "projectId", "status", "statusDetail", "results", "createTime", "startTime",
    "finishTime", "logUrl", "sourceProvenance", "buildTriggerId", "timing", "approval", "warnings",
    "failureInfo",
)  # fmt: skip
_STEP_OUTPUT_ONLY = ("timing", "pullTiming", "status", "exitCode")
ALLOW_LOOSE = "ALLOW_LOOSE"
_SUBSTITUTION_OPTIONS = {0: "MUST_MATCH", 1: "ALLOW_LOOSE", "MUST_MATCH": "MUST_MATCH", "ALLOW_LOOSE": "ALLOW_LOOSE"}


@dataclass
class InvalidBuild(Exception):
    """A Build Google refuses: 400 INVALID_ARGUMENT with this message."""

    message: str
    violations: list[dict[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _quote(text: str) -> str:
    """Go's %q, closely enough for messages."""
    return json.dumps(text, ensure_ascii=False)


def _go_map(values: dict[str, str]) -> str:
    return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(values.items())) + "]"


def _type_error(where: str, kind: str, value: Any) -> InvalidBuild:
    proto_type = {"string": "TYPE_STRING", "int": "TYPE_INT64", "bool": "TYPE_BOOL"}.get(kind, "TYPE_MESSAGE")
    message = f"Invalid value at '{where}' ({proto_type}), {json.dumps(value)}"
    return InvalidBuild(message, [{"field": where, "description": message}])


def _unknown(where: str, name: str) -> InvalidBuild:
    message = f"Invalid JSON payload received. Unknown name {_quote(name)} at '{where}': Cannot find field."
    return InvalidBuild(message, [{"field": where, "description": message}])


def _check_value(where: str, schema: Any, value: Any) -> Any:
    """`value` with camelCase keys, or InvalidBuild for an unknown field or a wrong JSON type."""
    if schema == _ANY or value is None:
        return value
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise _type_error(where, "message", value)
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key if key in schema else _camel(key)
            if name not in schema:
                raise _unknown(where, key)
            out[name] = _check_value(f"{where}.{name}", schema[name], item)
        return out
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise _type_error(where, "message", value)
        return [_check_value(f"{where}[{i}]", schema[0], item) for i, item in enumerate(value)]
    if schema == _STR:
        if not isinstance(value, str):
            raise _type_error(where, _STR, value)
        return value
    if schema == _BOOL:
        if not isinstance(value, bool):
            raise _type_error(where, _BOOL, value)
        return value
    if schema == _INT:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
            raise _type_error(where, _INT, value)
        return value
    if schema in (_STRS, _INTS):
        if not isinstance(value, list):
            raise _type_error(where, _STR if schema == _STRS else _INT, value)
        return [_check_value(f"{where}[{i}]", _STR if schema == _STRS else _INT, item) for i, item in enumerate(value)]
    if schema == _MAP:
        if not isinstance(value, dict):
            raise _type_error(where, "message", value)
        for key, item in value.items():
            if not isinstance(item, str):
                raise _type_error(f"{where}[{key}]", _STR, item)
        return dict(value)
    raise AssertionError(f"unknown schema {schema!r}")


def parse_duration(where: str, value: Any) -> float:
    """A protobuf Duration in JSON ("600s", "1.5s") as seconds."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        message = f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Duration), {json.dumps(value)}"
        raise InvalidBuild(message, [{"field": where, "description": message}])
    seconds = int(match.group(1))
    fraction = float(f"0.{match.group(2)}") if match.group(2) else 0.0
    return seconds - fraction if seconds < 0 else seconds + fraction


def format_duration(seconds: float) -> str:
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _go_duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s" if minutes else f"{secs}s"


# -- substitutions ----------------------------------------------------------------------------
def template_parameters(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, key) of every `$KEY`, `${KEY}` and `$$` (key None) in `text`, left to right."""
    found: list[tuple[int, int, str | None]] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text) and text[i + 1] == "$":
            found.append((i, i + 2, None))
            i += 2
            continue
        if text[i] == "$":
            match = _PARAMETER.match(text, i)
            if match:
                found.append((i, match.end(), match.group(1) or match.group(2)))
                i = match.end()
                continue
        i += 1
    return found


def substitute(text: str, values: dict[str, str]) -> str:
    """`text` with every parameter replaced (an unknown one by ""), and `$$` by `$`."""
    out: list[str] = []
    last = 0
    for start, end, key in template_parameters(text):
        out.append(text[last:start])
        out.append("$" if key is None else values.get(key, ""))
        last = end
    out.append(text[last:])
    return "".join(out)


def _templated(build: dict[str, Any]) -> list[str]:
    """Every string of the Build that substitutions apply to."""
    texts: list[str] = []
    for step in build.get("steps") or []:
        texts += [step.get("name") or "", *(step.get("args") or []), *(step.get("env") or [])]
        texts += [step.get("dir") or "", step.get("entrypoint") or ""]
    texts += list(build.get("images") or [])
    texts += list(build.get("tags") or [])
    objects = (build.get("artifacts") or {}).get("objects") if isinstance(build.get("artifacts"), dict) else None
    if isinstance(objects, dict):
        texts += [objects.get("location") or "", *(objects.get("paths") or [])]
    return texts


def substitution_option(build: dict[str, Any]) -> str:
    raw = (build.get("options") or {}).get("substitutionOption", 0)
    option = _SUBSTITUTION_OPTIONS.get(raw)
    if option is None:
        where = "build.options.substitution_option"
        message = f"Invalid value at '{where}' (type.googleapis.com/google.devtools.cloudbuild.v1.BuildOptions.SubstitutionOption), {json.dumps(raw)}"
        raise InvalidBuild(message, [{"field": where, "description": message}])
    return option


def _check_substitution_keys(substitutions: dict[str, str]) -> None:
    if len(substitutions) > MAX_SUBSTITUTIONS:
        raise InvalidBuild(
            f"invalid build: invalid .substitutions field: number of substitutions {len(substitutions)} exceeded (max: {MAX_SUBSTITUTIONS})"
        )
    for key, value in sorted(substitutions.items()):
        if len(key) > MAX_SUBST_KEY:
            raise InvalidBuild(
                f"invalid build: invalid .substitutions field: substitution key {_quote(key)} too long (max: {MAX_SUBST_KEY})"
            )
        if not USER_KEY.match(key) and not BUILT_INS.get(key, False):
            raise InvalidBuild(
                f"invalid build: invalid .substitutions field: substitution key {_quote(key)} does not respect format "
                f"{_quote(USER_KEY_TEXT)} and is not an overridable built-in substitutions"
            )
        if len(value) > MAX_SUBST_VALUE:
            raise InvalidBuild(
                f"invalid build: invalid .substitutions field: substitution value {_quote(value)} too long (max: {MAX_SUBST_VALUE})"
            )


def _check_template(build: dict[str, Any], loose: bool) -> None:
    """Every `$KEY` is known and every substitution is used (unless ALLOW_LOOSE)."""
    substitutions: dict[str, str] = build.get("substitutions") or {}
    used = {key: False for key in substitutions}
    problems: list[str] = []
    for text in _templated(build):
        for _, _, key in template_parameters(text):
            if key is None:
                continue
            if key not in substitutions:
                if USER_KEY.match(key):
                    problems.append(
                        f"key in the template {_quote(key)} is not matched in the substitution data; "
                        f"substitutions = {_go_map(substitutions)}"
                    )
                    continue
                if key not in BUILT_INS:
                    raise InvalidBuild(
                        "generic::invalid_argument: invalid value for 'build.substitutions': "
                        f"key in the template {_quote(key)} is not a valid built-in substitution"
                    )
            used[key] = True
    for key, was_used in sorted(used.items()):
        if not was_used:
            problems.append(f"key {_quote(key)} in the substitution data is not matched in the template")
    if problems and not loose:
        unique = list(dict.fromkeys(problems))
        raise InvalidBuild("generic::invalid_argument: " + ";".join(unique))


# -- the whole Build --------------------------------------------------------------------------
def check_build(raw: Any) -> dict[str, Any]:
    """The Build as Google keeps it (camelCase, output-only fields dropped), or InvalidBuild."""
    if not isinstance(raw, dict):
        raise InvalidBuild("Invalid JSON payload received. Expected an object for 'build'.")
    build: dict[str, Any] = _check_value("build", BUILD_FIELDS, copy.deepcopy(raw))
    for name in OUTPUT_ONLY:
        build.pop(name, None)
    for step in build.get("steps") or []:
        for name in _STEP_OUTPUT_ONLY:
            step.pop(name, None)
    build_timeout = float(DEFAULT_TIMEOUT_S)
    if build.get("timeout") is not None:
        build_timeout = parse_duration("build.timeout", build["timeout"])
        if build_timeout > MAX_TIMEOUT_S:
            raise InvalidBuild(f"invalid build: timeout exceeds the timeout limit of {_go_duration(MAX_TIMEOUT_S)}")
        if build_timeout < 0:
            raise InvalidBuild("invalid build: invalid timeout: timeout must be >=0")
        if build_timeout == 0:
            build_timeout = float(DEFAULT_TIMEOUT_S)
    build["timeout"] = format_duration(build_timeout)
    if build.get("queueTtl") is not None:
        parse_duration("build.queue_ttl", build["queueTtl"])
    else:
        build["queueTtl"] = format_duration(DEFAULT_QUEUE_TTL_S)
    substitutions = build.get("substitutions") or {}
    _check_substitution_keys(substitutions)
    images = build.get("images") or []
    if len(images) > MAX_IMAGES:
        raise InvalidBuild(
            f"invalid build: invalid .artifacts field: cannot specify more than {MAX_IMAGES} images to build"
        )
    for index, image in enumerate(images):
        if len(image) > MAX_IMAGE_LENGTH:
            raise InvalidBuild(
                f"invalid build: invalid .artifacts field: image {index} too long (max: {MAX_IMAGE_LENGTH})"
            )
    _check_steps(build.get("steps") or [], build_timeout)
    if len(build.get("tags") or []) > MAX_TAGS:
        raise InvalidBuild(f"invalid build: cannot specify more than {MAX_TAGS} tags")
    _check_template(build, substitution_option(build) == ALLOW_LOOSE)
    return build


def _check_steps(steps: list[dict[str, Any]], build_timeout: float) -> None:
    prefix = "invalid build: invalid .steps field: "
    if not steps:
        raise InvalidBuild(prefix + "no build steps are specified")
    if len(steps) > MAX_STEPS:
        raise InvalidBuild(prefix + f"cannot specify more than {MAX_STEPS} build steps")
    known = {START_STEP}
    for i, step in enumerate(steps):
        name = step.get("name") or ""
        step_id = step.get("id") or ""
        if not name:
            raise InvalidBuild(prefix + f"build step {i} must specify name")
        if len(name) > MAX_STEP_NAME:
            raise InvalidBuild(prefix + f"build step {i} name too long (max: {MAX_STEP_NAME})")
        args = step.get("args") or []
        if len(args) > MAX_ARGS:
            raise InvalidBuild(prefix + f"build step {i} too many args (max: {MAX_ARGS})")
        for a, arg in enumerate(args):
            if len(arg) > MAX_ARG_LENGTH:
                raise InvalidBuild(prefix + f"build step {i} arg {a} too long (max: {MAX_ARG_LENGTH})")
        if len(step.get("dir") or "") > MAX_DIR_LENGTH:
            raise InvalidBuild(prefix + f"build step {i} dir too long (max: {MAX_DIR_LENGTH})")
        if step.get("script") and args:
            raise InvalidBuild(prefix + f"build step {i}: script and args are mutually exclusive")
        for dependency in step.get("waitFor") or []:
            if dependency not in known:
                who = f"#{i} - {_quote(step_id)}" if step_id else f"#{i}"
                raise InvalidBuild(
                    prefix + f"build step {who} depends on {_quote(dependency)}, which has not been defined"
                )
        if step_id:
            if step_id == START_STEP:
                raise InvalidBuild(
                    prefix
                    + f"build step #{i} - {_quote(step_id)}: the ID cannot be {_quote(START_STEP)} which is reserved "
                    "as a dependency for build steps that should run first"
                )
            if step_id in known:
                raise InvalidBuild(prefix + f"build step #{i} - {_quote(step_id)}: the ID is not unique")
            known.add(step_id)
        envs = step.get("env") or []
        if len(envs) > MAX_ENVS:
            raise InvalidBuild(prefix + f"build step {i} too many envs (max: {MAX_ENVS})")
        for env in envs:
            if "=" not in env:
                raise InvalidBuild(
                    prefix
                    + f'build step #{i} - {_quote(step_id)}: the Env entry {_quote(env)} must be of the form "KEY=VALUE"'
                )
        if step.get("timeout") is not None:
            timeout = parse_duration(f"build.steps[{i}].timeout", step["timeout"])
            if timeout < 0:
                raise InvalidBuild(f"invalid build: invalid .timeout in build step #{i}: build step timeout must be >0")
            if timeout > build_timeout:
                raise InvalidBuild(
                    f"generic::invalid_argument: invalid value for 'build.steps[{i}].timeout': value must be less than "
                    f"or equal to build timeout value of {_quote(_go_duration(build_timeout))}"
                )


def built_in_values(
    project: str, project_number: int, build_id: str, location: str, overrides: dict[str, str]
) -> dict[str, str]:
    """The values of the built-in substitutions for one build (empty where no trigger or repo gives one)."""
    values = {key: "" for key in BUILT_INS}
    service_account = f"{project_number}@cloudbuild.gserviceaccount.com"
    values.update(
        PROJECT_ID=project,
        PROJECT_NUMBER=str(project_number),
        BUILD_ID=build_id,
        LOCATION=location,
        SERVICE_ACCOUNT_EMAIL=service_account,
        SERVICE_ACCOUNT=f"projects/{project}/serviceAccounts/{service_account}",
    )
    values.update({k: v for k, v in overrides.items() if BUILT_INS.get(k)})
    return values


def apply_substitutions(build: dict[str, Any], built_ins: dict[str, str]) -> dict[str, Any]:
    """A copy of a checked Build with substitutions applied to its steps, images and tags.

    Then the names that must be image references are checked, as Google does after substituting.
    """
    values = dict(built_ins)
    values.update(build.get("substitutions") or {})
    out = copy.deepcopy(build)
    for step in out.get("steps") or []:
        for key in ("name", "dir", "entrypoint"):
            if step.get(key):
                step[key] = substitute(step[key], values)
        for key in ("args", "env"):
            if step.get(key):
                step[key] = [substitute(item, values) for item in step[key]]
    if out.get("images"):
        out["images"] = [substitute(image, values) for image in out["images"]]
    if out.get("tags"):
        out["tags"] = [substitute(tag, values) for tag in out["tags"]]
    objects = (out.get("artifacts") or {}).get("objects") if isinstance(out.get("artifacts"), dict) else None
    if isinstance(objects, dict):
        if objects.get("location"):
            objects["location"] = substitute(objects["location"], values)
        if objects.get("paths"):
            objects["paths"] = [substitute(p, values) for p in objects["paths"]]
    for step in out.get("steps") or []:
        if not REFERENCE.match(step["name"]):
            raise InvalidBuild(
                f"invalid build: invalid build step name {_quote(step['name'])}: could not parse reference: {step['name']}"
            )
    for tag in out.get("tags") or []:
        if not _BUILD_TAG.match(tag):
            raise InvalidBuild(
                f"invalid build: invalid build tag {_quote(tag)}: must match format {_quote('^' + _TAG + '$')}"
            )
    for image in out.get("images") or []:
        if not REFERENCE.match(image):
            raise InvalidBuild(f"invalid build: invalid image name {_quote(image)}: could not parse reference: {image}")
    return out


def registry_of(image: str) -> str | None:
    """The registry host of an image reference (`127.0.0.1:5000`, `gcr.io`), None for Docker Hub."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return None
