"""The config layers, every error message, and the example file staying in step with KEYS."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from parallel_engine.config import KEYS, Config, describe_keys, load_config
from parallel_engine.errors import ConfigError
from tests.helpers import alias_bomb

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".config.example.yaml"
GCE = {"BACKEND": "gce", "PROJECT_ID": "p", "ZONE": "europe-west1-b", "BUCKET": "b-1"}


def write(folder: Path, text: str, name: str = ".config.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, file: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> Config:
    """load_config isolated from the real environment and working directory."""
    if file is not None:
        write(tmp_path, file)
    return load_config(flags=flags or None, environ=env or {}, cwd=tmp_path)


def error(tmp_path: Path, file: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, file, env, **flags)
    return str(caught.value)


# --------------------------------------------------------------------------- defaults


def test_no_file_means_local_defaults_with_one_worker_per_cpu(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.path is None
    assert config.backend == "local"
    assert config.runtime == "auto"
    assert config.store == ".parallel-engine"
    assert config.retries == 0 and config.preemption_retries == 3
    assert config.heartbeat == 30.0 and config.max_run_duration == 86400.0 and config.poll_interval == 2.0
    assert config.boot_timeout == 300.0  # COS boot, worker image pull, container start: not the heartbeat's
    assert config.labels == {} and config.fallback_zones == []
    assert config.effective_quota() == max(1, os.cpu_count() or 1)
    assert set(config.origins) == set(KEYS)
    assert set(config.origins.values()) == {"default"}


def test_gce_quota_defaults_to_eight_and_vm_quotas_wins(tmp_path: Path) -> None:
    assert load(tmp_path, **GCE).effective_quota() == 8
    assert load(tmp_path, **GCE, VM_QUOTAS=3).effective_quota() == 3
    assert load(tmp_path, VM_QUOTAS=2).effective_quota() == 2


def test_default_command_is_this_python_running_code_main(tmp_path: Path) -> None:
    assert load(tmp_path).command_argv() == [sys.executable, "code/main.py"]


def test_command_string_is_shlex_split_and_list_is_kept(tmp_path: Path) -> None:
    assert load(tmp_path, "COMMAND: python3 'my prog.py' -v\n").command_argv() == ["python3", "my prog.py", "-v"]
    assert load(tmp_path, "COMMAND: [python3, 'a b.py']\n").command_argv() == ["python3", "a b.py"]


def test_config_constructed_directly_has_the_table_defaults(tmp_path: Path) -> None:
    direct = Config()
    loaded = load(tmp_path)
    for key in KEYS.values():
        assert getattr(direct, key.attr) == getattr(loaded, key.attr), key.name


def test_mutable_defaults_are_not_shared_between_configs(tmp_path: Path) -> None:
    first = load(tmp_path)
    first.labels["x"] = "y"
    assert load(tmp_path).labels == {}
    assert KEYS["LABELS"].default == {}


def test_seed_config_file_loads_unchanged(tmp_path: Path) -> None:
    seed = (
        "PROJECT_ID: py-project\nZONE: europe-west1-b\nMACHINE_TYPE: n1-standard-1\nVM_QUOTAS: 64\n"
        "NETWORK: default\nSERVICE_ACCOUNT: service-account@project.iam.gserviceaccount.com\n"
    )
    config = load(tmp_path, seed)
    assert config.path == (tmp_path / ".config.yaml").resolve()
    assert (config.project_id, config.zone, config.vm_quotas) == ("py-project", "europe-west1-b", 64)
    assert config.service_account == "service-account@project.iam.gserviceaccount.com"
    assert config.origins["ZONE"] == f"file {config.path}"
    assert config.backend == "local"


def test_empty_or_comment_only_file_means_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").backend == "local"
    assert load(tmp_path, "# nothing here\n").effective_quota() >= 1


def test_key_with_no_value_keeps_the_default(tmp_path: Path) -> None:
    config = load(tmp_path, "MACHINE_TYPE:\nIMAGE: ''\n")
    assert config.machine_type == "n1-standard-1" and config.image is None
    assert config.origins["MACHINE_TYPE"] == "default"


# --------------------------------------------------------------------------- precedence


def test_flag_beats_environment(tmp_path: Path) -> None:
    config = load(tmp_path, env={"PARALLEL_ENGINE_MACHINE_TYPE": "e2-small"}, MACHINE_TYPE="e2-large")
    assert config.machine_type == "e2-large"
    assert config.origins["MACHINE_TYPE"] == "flag --machine-type"


def test_environment_beats_file(tmp_path: Path) -> None:
    config = load(tmp_path, "MACHINE_TYPE: e2-medium\n", env={"PARALLEL_ENGINE_MACHINE_TYPE": "e2-small"})
    assert config.machine_type == "e2-small"
    assert config.origins["MACHINE_TYPE"] == "environment PARALLEL_ENGINE_MACHINE_TYPE"


def test_file_beats_default(tmp_path: Path) -> None:
    config = load(tmp_path, "MACHINE_TYPE: e2-medium\n")
    assert config.machine_type == "e2-medium"
    assert config.origins["MACHINE_TYPE"] == f"file {(tmp_path / '.config.yaml').resolve()}"


def test_flag_beats_file(tmp_path: Path) -> None:
    config = load(tmp_path, "RETRIES: 1\n", RETRIES=4)
    assert config.retries == 4 and config.origins["RETRIES"] == "flag --retries"


def test_environment_beats_default(tmp_path: Path) -> None:
    config = load(tmp_path, env={"PARALLEL_ENGINE_RETRIES": "2"})
    assert config.retries == 2 and config.origins["RETRIES"] == "environment PARALLEL_ENGINE_RETRIES"


def test_flag_beats_default_and_uses_the_key_flag_name(tmp_path: Path) -> None:
    config = load(tmp_path, VM_QUOTAS=5)
    assert config.vm_quotas == 5 and config.origins["VM_QUOTAS"] == "flag --jobs"


def test_none_flag_means_not_given(tmp_path: Path) -> None:
    config = load(tmp_path, "RETRIES: 1\n", env={"PARALLEL_ENGINE_ZONE": "europe-west1-c"}, RETRIES=None, ZONE=None)
    assert config.retries == 1 and config.zone == "europe-west1-c"


def test_blank_environment_value_means_not_set(tmp_path: Path) -> None:
    config = load(tmp_path, "RETRIES: 1\n", env={"PARALLEL_ENGINE_RETRIES": "  "})
    assert config.retries == 1


def test_unprefixed_image_and_zone_in_the_environment_are_never_read(tmp_path: Path) -> None:
    env = {"IMAGE": "leaked:latest", "ZONE": "us-east1-b", "BACKEND": "gce", "RETRIES": "9"}
    config = load(tmp_path, env=env)
    assert config.image is None and config.zone is None
    assert config.backend == "local" and config.retries == 0


def test_unknown_prefixed_environment_variables_are_ignored(tmp_path: Path) -> None:
    assert load(tmp_path, env={"PARALLEL_ENGINE_SOMETHING_ELSE": "1"}).backend == "local"


def test_environ_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLEL_ENGINE_RETRIES", "7")
    monkeypatch.delenv("PARALLEL_ENGINE_CONFIG", raising=False)
    assert load_config(cwd=tmp_path).retries == 7


# --------------------------------------------------------------------------- which file


def test_explicit_path_wins_over_env_and_cwd(tmp_path: Path) -> None:
    write(tmp_path, "RETRIES: 1\n")
    other = write(tmp_path, "RETRIES: 2\n", "other.yaml")
    env_file = write(tmp_path, "RETRIES: 3\n", "env.yaml")
    config = load_config("other.yaml", environ={"PARALLEL_ENGINE_CONFIG": str(env_file)}, cwd=tmp_path)
    assert config.retries == 2 and config.path == other.resolve()


def test_config_env_var_wins_over_cwd_file(tmp_path: Path) -> None:
    write(tmp_path, "RETRIES: 1\n")
    env_file = write(tmp_path, "RETRIES: 3\n", "env.yaml")
    config = load_config(environ={"PARALLEL_ENGINE_CONFIG": str(env_file)}, cwd=tmp_path)
    assert config.retries == 3 and config.path == env_file.resolve()


def test_explicit_path_missing_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "nope.yaml"))):
        load_config(tmp_path / "nope.yaml", environ={}, cwd=tmp_path)


def test_config_env_var_naming_a_missing_file_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PARALLEL_ENGINE_CONFIG") as caught:
        load_config(environ={"PARALLEL_ENGINE_CONFIG": "missing.yaml"}, cwd=tmp_path)
    assert str(tmp_path / "missing.yaml") in str(caught.value)


def test_config_path_that_is_a_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        load_config(tmp_path, environ={}, cwd=tmp_path)


# --------------------------------------------------------------------------- coercions


def test_environment_strings_are_coerced_to_each_type(tmp_path: Path) -> None:
    env = {
        "PARALLEL_ENGINE_VM_QUOTAS": "12",
        "PARALLEL_ENGINE_SPOT": "yes",
        "PARALLEL_ENGINE_EXTERNAL_IP": "FALSE",
        "PARALLEL_ENGINE_CPUS": "0.5",
        "PARALLEL_ENGINE_TASK_TIMEOUT": "10m",
        "PARALLEL_ENGINE_FALLBACK_ZONES": "europe-west1-c, europe-west1-d",
        "PARALLEL_ENGINE_LABELS": "team=data,env=dev",
        "PARALLEL_ENGINE_COMMAND": "python3 -u prog.py",
        "PARALLEL_ENGINE_BACKEND": "LOCAL",
        "PARALLEL_ENGINE_MEMORY": "2G",
    }
    config = load(tmp_path, env=env)
    assert config.vm_quotas == 12
    assert config.spot is True and config.external_ip is False
    assert config.cpus == 0.5
    assert config.task_timeout == 600.0
    assert config.fallback_zones == ["europe-west1-c", "europe-west1-d"]
    assert config.labels == {"team": "data", "env": "dev"}
    assert config.command_argv() == ["python3", "-u", "prog.py"]
    assert config.backend == "local"
    assert config.memory == "2g" and config.memory_bytes() == 2 * 1024**3


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("Yes", True), ("1", True), ("TRUE", True),
    ("false", False), ("no", False), ("0", False), ("No", False),
])
def test_bools_from_the_environment(tmp_path: Path, text: str, expected: bool) -> None:
    assert load(tmp_path, env={"PARALLEL_ENGINE_SPOT": text}).spot is expected


def test_yaml_bools_and_typed_flags_are_taken_as_is(tmp_path: Path) -> None:
    assert load(tmp_path, "SPOT: yes\nEXTERNAL_IP: false\n").spot is True
    assert load(tmp_path, SPOT=True, FALLBACK_ZONES=("europe-west1-c",), LABELS=["a=b"]).labels == {"a": "b"}


@pytest.mark.parametrize("value, seconds", [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0),
    ("1d", 86400.0), ("1h30m", 5400.0), ("0.5h", 1800.0), (" 45 s ", 45.0),
])
def test_durations_become_float_seconds(tmp_path: Path, value: Any, seconds: float) -> None:
    assert load(tmp_path, TASK_TIMEOUT=value).task_timeout == seconds


def test_durations_from_file_and_environment(tmp_path: Path) -> None:
    config = load(tmp_path, "HEARTBEAT: 1m\nPOLL_INTERVAL: 0.5\n", env={"PARALLEL_ENGINE_MAX_RUN_DURATION": "2d"})
    assert (config.heartbeat, config.poll_interval, config.max_run_duration) == (60.0, 0.5, 172800.0)


@pytest.mark.parametrize("value", ["soon", "10x", "-5", "0", "", "m", True])
def test_bad_durations_are_refused(tmp_path: Path, value: Any) -> None:
    if value == "":  # blank means "not given", not an error
        assert load(tmp_path, TASK_TIMEOUT=value).task_timeout is None
        return
    message = error(tmp_path, TASK_TIMEOUT=value)
    assert "TASK_TIMEOUT" in message and "flag --timeout" in message and "duration" in message


def test_max_run_duration_respects_google_limits(tmp_path: Path) -> None:
    assert "MAX_RUN_DURATION" in error(tmp_path, MAX_RUN_DURATION="10s")
    assert "MAX_RUN_DURATION" in error(tmp_path, MAX_RUN_DURATION="121d")
    assert load(tmp_path, MAX_RUN_DURATION="120d").max_run_duration == 120 * 86400


def test_bucket_gs_prefix_is_dropped(tmp_path: Path) -> None:
    assert load(tmp_path, "BUCKET: gs://my-bucket/\n").bucket == "my-bucket"


def test_bucket_with_a_path_inside_is_refused(tmp_path: Path) -> None:
    message = error(tmp_path, "BUCKET: gs://my-bucket/some/prefix\n")
    assert "BUCKET" in message and ".config.yaml" in message and "bucket name" in message


def test_region_is_derived_from_zone_unless_set(tmp_path: Path) -> None:
    assert load(tmp_path, ZONE="europe-west1-b").region_name() == "europe-west1"
    assert load(tmp_path, ZONE="europe-west1-b", REGION="europe-west1").region_name() == "europe-west1"
    assert load(tmp_path).region_name() is None


def test_region_not_containing_zone_is_refused_naming_both(tmp_path: Path) -> None:
    message = error(tmp_path, "ZONE: europe-west1-b\n", env={"PARALLEL_ENGINE_REGION": "us-east1"})
    assert "ZONE" in message and "REGION" in message and "PARALLEL_ENGINE_REGION" in message
    assert ".config.yaml" in message


def test_metadata_host_is_kept_as_host_port(tmp_path: Path) -> None:
    assert load(tmp_path, METADATA_HOST="http://127.0.0.1:8083/").metadata_host == "127.0.0.1:8083"


def test_endpoints_must_be_urls(tmp_path: Path) -> None:
    assert load(tmp_path, STORAGE_ENDPOINT="http://127.0.0.1:4443/").storage_endpoint == "http://127.0.0.1:4443"
    message = error(tmp_path, env={"PARALLEL_ENGINE_COMPUTE_ENDPOINT": "127.0.0.1:8081"})
    assert "COMPUTE_ENDPOINT" in message and "PARALLEL_ENGINE_COMPUTE_ENDPOINT" in message and "URL" in message


# --------------------------------------------------------------------------- errors


def test_unknown_key_in_file_suggests_the_closest_key(tmp_path: Path) -> None:
    message = error(tmp_path, "ZONE: europe-west1-b\nBUKET: my-bucket\n")
    assert "BUKET" in message and "did you mean BUCKET" in message
    assert str((tmp_path / ".config.yaml").resolve()) in message and "line 2" in message


def test_unknown_key_with_nothing_close_points_at_the_example(tmp_path: Path) -> None:
    message = error(tmp_path, "XYZZY: 1\n")
    assert "XYZZY" in message and ".config.example.yaml" in message


def test_lower_case_key_suggests_the_upper_case_one(tmp_path: Path) -> None:
    message = error(tmp_path, "zone: europe-west1-b\n")
    assert "zone" in message and "ZONE" in message and "upper case" in message and ".config.yaml" in message


def test_unknown_flag_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    message = error(tmp_path, RETRYS=2)
    assert "RETRYS" in message and "flag" in message and "did you mean RETRIES" in message


@pytest.mark.parametrize("key, value, expected", [
    ("VM_QUOTAS", "many", "positive integer"),
    ("VM_QUOTAS", "0", "positive integer"),
    ("RETRIES", "-1", "integer >= 0"),
    ("BOOT_DISK_GB", "5", "integer >= 10"),
    ("SPOT", "maybe", "true or false"),
    ("BACKEND", "aws", "one of local, gce"),
    ("RUNTIME", "podman", "one of auto, process, docker"),
    ("ARG_STYLE", "colon", "one of equals, space"),
    ("DOCKER_NETWORK", "bridge", "one of none, host"),
    ("CPUS", "lots", "positive number"),
    ("CPUS", "-1", "positive number"),
    ("MEMORY", "2 gigs", "512m or 2g"),
    ("MEMORY", "1m", "512m or 2g"),
    ("LABELS", "Team=Data", "labels"),
    ("LABELS", "novalue", "labels"),
    ("LABELS", "parallel-engine-run=x", "labels"),
    ("LABELS", "parallel-engine-task=x", "-task and -attempt are ours"),  # containers carry them
    ("LABELS", "parallel-engine-attempt=1", "-task and -attempt are ours"),
    ("ZONE", "europe-west1", "zone like europe-west1-b"),
    ("FALLBACK_ZONES", "europe-west1-c,EU", "list of zones"),
    ("COMMAND", "python 'unclosed", "command line"),
    ("TASKS_PER_VM", "1.5", "positive integer"),
])
def test_invalid_environment_value_names_key_variable_and_expectation(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    message = error(tmp_path, env={f"PARALLEL_ENGINE_{key}": value})
    assert key in message and f"environment PARALLEL_ENGINE_{key}" in message
    assert expected in message and repr(value) in message


@pytest.mark.parametrize("line, key, expected", [
    ("VM_QUOTAS: many", "VM_QUOTAS", "positive integer"),
    ("VM_QUOTAS: 2.5", "VM_QUOTAS", "positive integer"),
    ("SPOT: 3", "SPOT", "true or false"),
    ("PROJECT_ID: 123", "PROJECT_ID", "a string"),
    ("PROJECT_ID: [a, b]", "PROJECT_ID", "a string"),
    ("LABELS: [a, b]", "LABELS", "labels"),
    ("LABELS: {team: {nested: x}}", "LABELS", "labels"),
    ("FALLBACK_ZONES: {a: b}", "FALLBACK_ZONES", "list of zones"),
    ("COMMAND: [python, 3]", "COMMAND", "list of strings"),
    ("HEARTBEAT: forever", "HEARTBEAT", "duration"),
])
def test_invalid_file_value_names_key_file_line_and_expectation(
    tmp_path: Path, line: str, key: str, expected: str
) -> None:
    message = error(tmp_path, "NETWORK: default\n" + line + "\n")
    assert key in message and str((tmp_path / ".config.yaml").resolve()) in message
    assert "line 2" in message and expected in message


@pytest.mark.parametrize("line", [
    'COMMAND: "python \\0x"',
    'COMMAND: [python, "a\\x00b"]',
    'ARGS_TEMPLATE: "--x \\0{x}"',
])
def test_nul_escape_in_a_config_value_is_refused_naming_key_file_and_line(tmp_path: Path, line: str) -> None:
    assert "\0" not in line  # only the YAML escape makes the NUL
    key = line.split(":")[0]
    message = error(tmp_path, "NETWORK: default\n" + line + "\n")
    assert key in message and str((tmp_path / ".config.yaml").resolve()) in message
    assert "line 2" in message and "NUL" in message


def test_nul_in_a_command_flag_is_refused_naming_the_flag(tmp_path: Path) -> None:
    message = error(tmp_path, COMMAND=["python", "a\0b"])
    assert "COMMAND from flag --command" in message and "NUL" in message


def test_invalid_value_in_a_lower_layer_is_reported_even_when_overridden(tmp_path: Path) -> None:
    message = error(tmp_path, "RETRIES: lots\n", RETRIES=1)
    assert "RETRIES" in message and ".config.yaml" in message


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    message = error(tmp_path, "BUKET: x\nRETRIES: -3\n", env={"PARALLEL_ENGINE_SPOT": "maybe"})
    assert "3 config problems" in message
    assert "BUKET" in message and "RETRIES" in message and "PARALLEL_ENGINE_SPOT" in message


def test_invalid_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    message = error(tmp_path, "ZONE: europe-west1-b\nMACHINE_TYPE: [unclosed\nNETWORK: default\n")
    assert str((tmp_path / ".config.yaml").resolve()) in message and "not valid YAML" in message
    assert "line 2" in message  # where the unclosed list opened, not only where YAML gave up


def test_invalid_yaml_bad_indentation_reports_its_line(tmp_path: Path) -> None:
    message = error(tmp_path, "ZONE: europe-west1-b\n  MACHINE_TYPE: x: y\n")
    assert "line 2" in message


def test_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    message = error(tmp_path, "ZONE: europe-west1-b\nNETWORK: default\nZONE: europe-west1-c\n")
    assert "ZONE" in message and "lines 1 and 3" in message and ".config.yaml" in message


@pytest.mark.timeout(60)  # main took minutes: the bound is this test's own timeout
def test_a_yaml_alias_bomb_in_the_config_file_is_refused_at_the_alias_that_overflows(tmp_path: Path) -> None:
    message = error(tmp_path, alias_bomb(9, "LABELS: *a9"))
    where = f"config file {(tmp_path / '.config.yaml').resolve()}, line 6:"  # a5: [*a4, ...]
    assert message.startswith(f"{where} aliases expand this file beyond 1,000,000 characters (alias *a4 here")
    assert "lol" not in message


def test_a_config_value_shown_in_an_error_is_cut_short(tmp_path: Path) -> None:
    message = error(tmp_path, alias_bomb(3, "LABELS: *a3"))  # within the budget: a 6,561-value list
    (line,) = [line for line in message.splitlines() if "LABELS" in line]
    assert line.endswith("...") and len(line.split(", got ", 1)[1]) <= 80


def test_a_character_yaml_does_not_allow_is_refused_at_its_line_not_a_traceback(tmp_path: Path) -> None:
    message = error(tmp_path, "ZONE: europe-west1-b\nNETWORK: a\x01\n")
    assert "line 2: character U+0001 is not allowed in YAML" in message


def test_a_config_alias_inside_its_own_anchor_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    message = error(tmp_path, "ZONE: europe-west1-b\nLABELS: &x [*x]\n")
    assert "line 2: alias *x is inside its own anchor" in message


@pytest.mark.parametrize("text, kind", [("- ZONE: x\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    message = error(tmp_path, text)
    assert "mapping" in message and kind in message and ".config.yaml" in message


def test_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".config.yaml").write_bytes(b"ZONE: \xff\xfe\n")
    assert "UTF-8" in error(tmp_path)


def test_errors_are_config_errors_not_tracebacks_for_odd_values(tmp_path: Path) -> None:
    for text in ("? [a, b]\n: c\n", "1: x\n", "VM_QUOTAS: !!binary aGk=\n", "LABELS: {1: 2}\n"):
        with pytest.raises(ConfigError):
            load(tmp_path, text)


# --------------------------------------------------------------------------- what backends need


def test_gce_backend_names_every_missing_key_and_where_to_set_it(tmp_path: Path) -> None:
    message = error(tmp_path, "BACKEND: gce\n")
    assert "ZONE and BUCKET are required for the gce backend" in message
    assert f"set them in {(tmp_path / '.config.yaml').resolve()}" in message
    assert "--set ZONE=... / PARALLEL_ENGINE_ZONE" in message and "--set BUCKET=... / PARALLEL_ENGINE_BUCKET" in message
    assert "PROJECT_ID" not in message  # the credentials may carry it: asked for once they are loaded


def test_gce_backend_without_a_file_says_create_config_yaml(tmp_path: Path) -> None:
    message = error(tmp_path, BACKEND="gce", ZONE="europe-west1-b")
    assert "BUCKET is required for the gce backend" in message
    assert "create .config.yaml" in message


def test_gce_backend_with_everything_set_loads(tmp_path: Path) -> None:
    config = load(tmp_path, **GCE)
    assert (config.backend, config.project_id, config.bucket, config.region_name()) == (
        "gce", "p", "b-1", "europe-west1"
    )


def test_require_names_one_missing_key_in_the_documented_form(tmp_path: Path) -> None:
    config = load(tmp_path, "ZONE: europe-west1-b\n")
    with pytest.raises(ConfigError) as caught:
        config.require("ZONE", "BUCKET", for_what="the gce backend")
    assert str(caught.value) == (
        f"BUCKET is required for the gce backend: set it in {config.path}, "
        "or with --set BUCKET=... / PARALLEL_ENGINE_BUCKET"
    )
    config.require("ZONE", for_what="anything")  # present: no error


def test_require_refuses_a_key_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load(tmp_path).require("NOPE", for_what="x")


# --------------------------------------------------------------------------- the key table and the example


def test_config_is_frozen(tmp_path: Path) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load(tmp_path).zone = "x"  # type: ignore[misc]


def test_every_key_has_a_typed_attribute_and_a_doc() -> None:
    attrs = {f.name for f in dataclasses.fields(Config)}
    for name, key in KEYS.items():
        assert name == name.upper() and key.attr == name.lower() and key.attr in attrs
        assert key.doc and key.env == f"PARALLEL_ENGINE_{name}"


def test_describe_keys_lists_every_key_seed_keys_first() -> None:
    rows = describe_keys()
    assert [row[0] for row in rows] == list(KEYS)
    assert [row[0] for row in rows[:6]] == [
        "PROJECT_ID", "ZONE", "MACHINE_TYPE", "VM_QUOTAS", "NETWORK", "SERVICE_ACCOUNT"
    ]
    described = dict((key, (default, doc)) for key, default, doc in rows)
    assert described["COMMAND"][0] == "python code/main.py, with the Python running parallel-engine"
    assert described["HEARTBEAT"][0] == "30s"
    assert "local|gce" in described["BACKEND"][1]


def example_keys() -> list[str]:
    return re.findall(r"^# ?([A-Z][A-Z0-9_]*):", EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE)


def test_example_file_loads_cleanly_as_is(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, environ={}, cwd=tmp_path)
    assert config.backend == "local" and config.path == EXAMPLE.resolve()


def test_example_file_covers_every_key_once() -> None:
    keys = example_keys()
    assert sorted(keys) == sorted(KEYS)
    assert len(keys) == len(set(keys))


def test_example_file_puts_the_seed_keys_first_under_their_heading() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "keys from Parallel engine's .config.yaml" in text
    assert example_keys()[:6] == ["PROJECT_ID", "ZONE", "MACHINE_TYPE", "VM_QUOTAS", "NETWORK", "SERVICE_ACCOUNT"]
    heading = text.index("keys from Parallel engine's .config.yaml")
    assert heading < text.index("# PROJECT_ID:")


def test_example_file_values_are_all_valid_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented = re.sub(r"^# ?([A-Z][A-Z0-9_]*:)", r"\1", text, flags=re.MULTILINE)
    assert set(yaml.safe_load(uncommented)) == set(KEYS)
    config = load_config(write(tmp_path, uncommented), environ={}, cwd=tmp_path)
    assert all(origin.startswith("file ") for origin in config.origins.values())


def test_example_file_states_each_default() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*\n", text)
    for key in KEYS:
        block = next(b for b in blocks if re.search(rf"^# ?{key}:", b, re.MULTILINE))
        assert "Default" in block, key


def test_every_flag_the_example_file_names_exists_on_run() -> None:
    import typer.main

    from parallel_engine.cli import app

    run = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    options = {opt for param in run.params for opt in param.opts}
    header = EXAMPLE.read_text(encoding="utf-8").split("\n\n")[0]
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", header))
    assert named and named <= options, f"not flags of `run`: {sorted(named - options)}"
    assert KEYS["VM_QUOTAS"].flag_name in options and KEYS["TASK_TIMEOUT"].flag_name in options


def test_value_given_with_set_is_named_as_set_key_in_errors_and_origins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"RETRIES from --set RETRIES must be an integer >= 0, got '-1'"):
        load_config(flags={"RETRIES": "-1"}, flag_names={"RETRIES": "--set RETRIES"}, environ={}, cwd=tmp_path)
    config = load_config(flags={"ZONE": "europe-west1-b"}, flag_names={"ZONE": "--set ZONE"},
                         environ={}, cwd=tmp_path)
    assert config.origins["ZONE"] == "--set ZONE"


def test_every_label_the_runtimes_set_is_refused_in_labels() -> None:
    # LABELS go on containers and VMs beside ours: a name of ours would be overwritten silently.
    from parallel_engine.config import _RESERVED_LABELS
    from parallel_engine.protocol import LABEL_ATTEMPT, LABEL_RUN, LABEL_TASK
    from parallel_engine.protocol import LABEL_RUN as RUN_LABEL
    from parallel_engine.protocol import LABEL_WORKER as WORKER_LABEL

    assert {LABEL_RUN, LABEL_TASK, LABEL_ATTEMPT, RUN_LABEL, WORKER_LABEL} <= set(_RESERVED_LABELS)
