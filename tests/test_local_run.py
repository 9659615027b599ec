"""End to end on the local backend with real processes, through the real command line."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

import parallel_engine as pe
from parallel_engine.store import local_store
from tests.helpers import ROOT, cli, read_json, run_id_of, write_probe
from tests.hostile import VALUES


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    write_probe(tmp_path)
    return tmp_path


def probe_cmd(workdir: Path) -> str:
    return f"{sys.executable} {workdir / 'probe.py'}"


def only_run_id(workdir: Path) -> str:
    runs = sorted((workdir / ".parallel-engine" / "runs").iterdir())
    assert len(runs) == 1
    return runs[0].name


def test_example_job_runs_and_collects_outputs_and_results_csv(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    done = cli("run", "code/params.csv", "-j", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = only_run_id(tmp_path)
    assert "12 succeeded" in done.stdout
    collected = cli("collect", run_id, "--dest", "results", cwd=tmp_path)
    assert collected.returncode == 0, collected.stderr
    rows = list(csv.DictReader(open(tmp_path / "results" / "results.csv", newline="")))
    assert len(rows) == 12
    assert list(rows[0]) == ["dataset", "project", "var", "task_id", "state", "exit_code", "attempts", "duration_s",
                             "worker", "started_at", "finished_at", "reason"]
    params = list(csv.DictReader(open(tmp_path / "code" / "params.csv", newline="")))
    for row, param in zip(rows, params):
        assert (row["dataset"], row["project"], row["var"]) == (param["dataset"], param["project"], param["var"])
        assert row["state"] == "succeeded" and row["exit_code"] == "0" and row["attempts"] == "1"
        summary = read_json(tmp_path / "results" / row["task_id"] / "summary.json")
        assert summary["dataset"] == param["dataset"] and summary["var"] == int(param["var"])
        assert len(summary["means"]) == int(param["var"])


def test_failing_task_makes_run_exit_1_and_summary_names_it(workdir: Path) -> None:
    (workdir / "params.csv").write_text("x\nok\n--exit=7\n")
    # The value "--exit=7" arrives as --x=--exit=7; use an args template to pass it bare.
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), "--args-template", "{x}", cwd=workdir)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed tasks" in done.stdout
    assert "exiting with 7" in done.stdout  # last stderr lines in the summary
    status = json.loads(cli("status", only_run_id(workdir), "--json", cwd=workdir).stdout)
    by_id = {t["task_id"]: t for t in status["tasks"]}
    assert by_id["1"]["state"] == "succeeded"
    assert by_id["2"]["state"] == "failed" and by_id["2"]["exit_code"] == 7


def test_task_over_timeout_is_killed_and_recorded_as_timeout(workdir: Path) -> None:
    (workdir / "params.csv").write_text("sleep\n30\n")
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), "--timeout", "1s", cwd=workdir)
    assert done.returncode == 1
    run_id = only_run_id(workdir)
    status = read_json(workdir / ".parallel-engine" / "runs" / run_id / "tasks" / "1" / "1" / "status.json")
    assert status["state"] == "timeout"
    assert status["finished_at"] - status["started_at"] < 10
    pids = (workdir / ".parallel-engine" / "runs" / run_id / "tasks" / "1" / "1" / "outputs" / "pids").read_text().split()
    import psutil

    for pid in map(int, pids):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_failed_attempt_is_retried_and_then_succeeds(workdir: Path) -> None:
    (workdir / "params.csv").write_text("fail-until\n3\n")
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), "--retries", "2", cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = only_run_id(workdir)
    status = json.loads(cli("status", run_id, "--json", cwd=workdir).stdout)
    task = status["tasks"][0]
    assert task["state"] == "succeeded" and task["attempts"] == 3
    attempts = workdir / ".parallel-engine" / "runs" / run_id / "tasks" / "1"
    states = [read_json(attempts / str(n) / "status.json")["state"] for n in (1, 2, 3)]
    assert states == ["failed", "failed", "succeeded"]
    assert "flaky failure" in cli("logs", run_id, "1", "--attempt", "1", "--stderr", cwd=workdir).stdout
    assert "attempt 3" in cli("logs", run_id, "1", cwd=workdir).stdout


def test_retries_stop_when_the_budget_is_spent(workdir: Path) -> None:
    (workdir / "params.csv").write_text("fail-until\n9\n")
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), "--retries", "1", cwd=workdir)
    assert done.returncode == 1
    status = json.loads(cli("status", only_run_id(workdir), "--json", cwd=workdir).stdout)
    assert status["tasks"][0]["state"] == "failed" and status["tasks"][0]["attempts"] == 2




def test_hostile_values_arrive_byte_exact_in_argv(workdir: Path) -> None:
    with open(workdir / "params.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["value"])
        for value in VALUES:
            writer.writerow([value])
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = only_run_id(workdir)
    for index, value in enumerate(VALUES, start=1):
        seen = read_json(workdir / ".parallel-engine" / "runs" / run_id / "tasks" / str(index) / "1" / "outputs" / "argv.json")
        assert seen["argv"] == [f"--value={value}"]
    assert not Path("/tmp/pe-pwned").exists()


def test_each_task_gets_its_pe_environment(workdir: Path) -> None:
    (workdir / "params.csv").write_text("task_id,k\nalpha,1\nbeta,2\n")
    handle = pe.run(workdir / "params.csv", command=probe_cmd(workdir), store=str(workdir / "store"))
    for task_id in ("alpha", "beta"):
        folder = workdir / "store" / "runs" / handle.run_id / "tasks" / task_id / "1"
        env = read_json(folder / "outputs" / "argv.json")["env"]
        assert env["PE_RUN_ID"] == handle.run_id
        assert env["PE_TASK_ID"] == task_id
        assert env["PE_ATTEMPT"] == "1"
        assert Path(env["PE_OUTPUT_DIR"]) == (folder / "outputs").resolve()


def test_no_more_than_quota_tasks_run_at_once(workdir: Path) -> None:
    (workdir / "params.csv").write_text("n\n" + "".join(f"{i}\n" for i in range(8)))
    tracker = workdir / "tracker.py"
    tracker.write_text(
        "import os, sys, time, fcntl\n"
        f"log = {str(workdir / 'spans')!r}\n"
        "start = time.time(); time.sleep(0.3); end = time.time()\n"
        "with open(log, 'a') as f:\n"
        "    fcntl.flock(f, fcntl.LOCK_EX); f.write(f'{start} {end}\\n')\n"
    )
    handle = pe.run(workdir / "params.csv", command=f"{sys.executable} {tracker}", jobs=3, store=str(workdir / "s"))
    assert handle.status().counts == {"succeeded": 8}
    spans = [tuple(map(float, line.split())) for line in (workdir / "spans").read_text().splitlines()]
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert peak <= 3
    assert peak >= 2  # they did overlap: the quota is a cap, not a serialisation


def test_program_that_cannot_start_is_an_infra_attempt(workdir: Path) -> None:
    # A task's own command (a COMMAND whose program is missing is refused before the run starts)
    (workdir / "tasks.yaml").write_text('tasks:\n- id: "1"\n  command: [/nonexistent/program]\n')
    handle = pe.run(workdir / "tasks.yaml", store=str(workdir / "s"), preemption_retries=1)
    view = handle.status().tasks[0]
    assert str(view.state) == "failed"
    assert [str(a.state) for a in view.attempts] == ["infra", "infra"]
    assert "cannot start '/nonexistent/program'" in view.attempts[0].reason


def test_runs_lists_newest_first_and_status_json_has_counts(workdir: Path) -> None:
    (workdir / "params.csv").write_text("x\n1\n2\n")
    first = cli("run", "params.csv", "--command", probe_cmd(workdir), cwd=workdir)
    second = cli("run", "params.csv", "--command", probe_cmd(workdir), cwd=workdir)
    assert first.returncode == second.returncode == 0
    listed = json.loads(cli("runs", "--json", cwd=workdir).stdout)
    assert [item["run_id"] for item in listed] == [run_id_of(second), run_id_of(first)]
    assert all(item["counts"] == {"succeeded": 2} and item["state"] == "finished" for item in listed)


def test_runs_started_in_the_same_second_are_listed_newest_first(workdir: Path) -> None:
    # Ids carry the second only; the random suffix must not decide. A real run's record, stored
    # twice as two runs of the same second, the later one with the smaller suffix.
    (workdir / "params.csv").write_text("x\n1\n")
    record = pe.run(workdir / "params.csv", command=probe_cmd(workdir), store=str(workdir / "s")).status().record
    store = local_store(workdir / ".parallel-engine")
    earlier, later = "20260101-120000-zzzzz", "20260101-120000-aaaaa"
    store.save_run(dataclasses.replace(record, run_id=earlier, created=1767268800.2))
    store.save_run(dataclasses.replace(record, run_id=later, created=1767268800.7))
    listed = json.loads(cli("runs", "--json", cwd=workdir).stdout)
    assert [item["run_id"] for item in listed] == [later, earlier]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of a rich table printed as text."""
    return [[cell.strip() for cell in line.strip("│┃").split("│" if "│" in line else "┃")]
            for line in text.splitlines() if line.startswith(("│", "┃"))]


def test_runs_table_at_80_columns_shows_whole_run_ids(workdir: Path) -> None:
    deep = workdir / "a-rather-long-folder-name" / "and-another-one-below-it"
    deep.mkdir(parents=True)
    (deep / "params-with-a-long-name.csv").write_text("x\n1\n")
    done = cli("run", str(deep / "params-with-a-long-name.csv"), "--command", probe_cmd(workdir), cwd=workdir)
    listed = cli("runs", cwd=workdir, env={"COLUMNS": "80"})
    assert listed.returncode == 0, listed.stderr
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    (row,) = [r for r in table_rows(listed.stdout) if r[0] and r[0] != "run"]
    assert row[0] == run_id_of(done) and row[1] == "finished"


def test_status_table_shows_state_attempts_and_exit_code_per_task(workdir: Path) -> None:
    (workdir / "params.csv").write_text("task_id,x\ngood,ok\nbad,--exit=7\n")
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), "--args-template", "{x}", cwd=workdir)
    shown = cli("status", run_id_of(done), cwd=workdir, env={"COLUMNS": "120"})
    assert shown.returncode == 0, shown.stderr
    rows = table_rows(shown.stdout)
    assert rows[0] == ["task", "state", "attempts", "exit code", "duration s", "worker", "reason", "parameters"]
    by_task = {row[0]: row for row in rows[1:]}
    assert by_task["good"][1:4] == ["succeeded", "1", "0"] and by_task["good"][7] == "x=ok"
    assert by_task["bad"][1:4] == ["failed", "1", "7"] and by_task["bad"][6] == "exit code 7"
    assert by_task["bad"][5].startswith("local-")
    assert "1 failed, 1 succeeded" in shown.stdout


def test_summary_lists_failed_tasks_with_their_exit_codes(workdir: Path) -> None:
    (workdir / "params.csv").write_text("task_id,x\ngood,ok\nbad,--exit=7\nworse,--exit=9\n")
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), "--args-template", "{x}", cwd=workdir,
               env={"COLUMNS": "120"})
    assert done.returncode == 1
    rows = table_rows(done.stdout)
    assert rows[0] == ["task", "state", "exit code", "attempts", "reason"]
    assert sorted(rows[1:]) == [
        ["bad", "failed", "7", "1", "exit code 7"],
        ["worse", "failed", "9", "1", "exit code 9"],
    ]
    assert "--- task bad, attempt 1: last stderr lines\nexiting with 7" in done.stdout


def test_unknown_run_is_a_clear_error_not_a_traceback(workdir: Path) -> None:
    (workdir / ".parallel-engine" / "runs").mkdir(parents=True)  # a store, without that run
    done = cli("status", "no-such-run", cwd=workdir)
    assert done.returncode == 2
    assert "no run 'no-such-run'" in done.stderr and "Traceback" not in done.stderr


def test_bad_params_file_is_a_clear_error_and_writes_no_run(workdir: Path) -> None:
    (workdir / "params.csv").write_text("a,b\n1,2\n3\n")
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), cwd=workdir)
    assert done.returncode == 2
    assert "params.csv:3" in done.stderr and "Traceback" not in done.stderr
    assert not (workdir / ".parallel-engine" / "runs").exists()


def test_nul_written_as_a_yaml_escape_is_refused_before_anything_runs(workdir: Path) -> None:
    (workdir / "tasks.yaml").write_text('tasks:\n  - id: a\n    command: "echo \\0x"\n')
    done = cli("run", "tasks.yaml", cwd=workdir, timeout=60)  # it used to hang, deaf to signals
    assert done.returncode == 2, done.stdout + done.stderr
    assert "tasks.yaml:3" in done.stderr and "NUL" in done.stderr and "Traceback" not in done.stderr
    assert not (workdir / ".parallel-engine" / "runs").exists()


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_store_that_cannot_be_a_folder_is_one_clear_error_and_exit_2(workdir: Path) -> None:
    (workdir / "params.csv").write_text("x\n1\n")
    done = cli("run", "params.csv", "--command", probe_cmd(workdir), "--store", "/dev/null/x", cwd=workdir)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert "cannot write /dev/null/x/runs/" in line and "Not a directory" in line


def test_collect_into_an_existing_file_is_one_clear_error_and_exit_2(workdir: Path) -> None:
    (workdir / "params.csv").write_text("x\n1\n")
    assert cli("run", "params.csv", "--command", probe_cmd(workdir), cwd=workdir).returncode == 0
    (workdir / "taken").write_text("mine")
    done = cli("collect", only_run_id(workdir), "--dest", "taken", cwd=workdir)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert "taken is a file, not a folder" in line
    assert (workdir / "taken").read_text() == "mine"


def test_collect_takes_the_winning_attempt_not_an_earlier_failed_one(workdir: Path) -> None:
    flaky = workdir / "flaky.py"
    flaky.write_text(
        "import os, pathlib, sys\n"
        "out, n = pathlib.Path(os.environ['PE_OUTPUT_DIR']), os.environ['PE_ATTEMPT']\n"
        "(out / 'result.txt').write_text(n)\n"
        "(out / f'attempt-{n}.txt').write_text(n)\n"
        "sys.exit(1 if n == '1' else 0)\n"
    )
    (workdir / "params.csv").write_text("x\n1\n")
    handle = pe.run(workdir / "params.csv", command=f"{sys.executable} {flaky}", retries=1,
                    store=str(workdir / "s"))
    assert [str(a.state) for a in handle.status().tasks[0].attempts] == ["failed", "succeeded"]
    handle.collect(workdir / "out")
    assert sorted(p.name for p in (workdir / "out" / "1").iterdir()) == ["attempt-2.txt", "result.txt"]
    assert (workdir / "out" / "1" / "result.txt").read_text() == "2"
    (row,) = csv.DictReader(open(workdir / "out" / "results.csv", newline=""))
    assert (row["state"], row["exit_code"], row["attempts"]) == ("succeeded", "0", "2")


def test_collect_never_replaces_a_folder_it_did_not_write(workdir: Path) -> None:
    (workdir / "params.csv").write_text("task_id,x\ncode,1\nother,2\n")
    (workdir / "code").mkdir()
    (workdir / "code" / "main.py").write_text("precious")
    assert cli("run", "params.csv", "--command", probe_cmd(workdir), cwd=workdir).returncode == 0
    done = cli("collect", only_run_id(workdir), "--dest", ".", cwd=workdir)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert "code already exists and was not written by `parallel-engine collect`" in line
    assert (workdir / "code" / "main.py").read_text() == "precious"
    assert not (workdir / "other").exists() and not (workdir / "results.csv").exists()  # refused before writing


def test_collect_again_into_the_same_folder_replaces_what_it_wrote(workdir: Path) -> None:
    (workdir / "params.csv").write_text("x\n1\n")
    assert cli("run", "params.csv", "--command", probe_cmd(workdir), cwd=workdir).returncode == 0
    run_id = only_run_id(workdir)
    assert cli("collect", run_id, "--dest", "out", cwd=workdir).returncode == 0
    (workdir / "out" / "1" / "stale").write_text("from before")
    again = cli("collect", run_id, "--dest", "out", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (workdir / "out" / "1").iterdir()) == ["argv.json"]


def test_collect_refuses_to_overwrite_a_results_csv_it_did_not_write(workdir: Path) -> None:
    (workdir / "params.csv").write_text("x\n1\n")
    assert cli("run", "params.csv", "--command", probe_cmd(workdir), cwd=workdir).returncode == 0
    (workdir / "out").mkdir()
    (workdir / "out" / "results.csv").write_text("my own\n")
    done = cli("collect", only_run_id(workdir), "--dest", "out", cwd=workdir)
    assert done.returncode == 2 and "results.csv already exists" in done.stderr
    assert (workdir / "out" / "results.csv").read_text() == "my own\n"


def test_no_config_file_means_local_backend_with_defaults(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    (tmp_path / "code" / "params.csv").write_text("dataset\nsales\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE")}
    done = cli("run", "code/params.csv", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert f"at most {os.cpu_count()} at once" in done.stderr


def test_default_command_outside_the_repository_root_is_one_clear_error(tmp_path: Path) -> None:
    shutil.copy(ROOT / "code" / "params.csv", tmp_path / "params.csv")  # no code/main.py here
    done = cli("run", "params.csv", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = error_lines(done.stderr)
    assert "COMMAND (default" in line and "code/main.py" in line and str(tmp_path) in line
    assert not (tmp_path / ".parallel-engine").exists()


def test_missing_script_does_not_matter_when_every_task_brings_its_own_command(tmp_path: Path) -> None:
    (tmp_path / "tasks.txt").write_text(f"{sys.executable} -c pass\n")
    done = cli("run", "tasks.txt", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unknown_config_key_is_one_clear_line_and_exit_2(workdir: Path) -> None:
    (workdir / "params.csv").write_text("x\n1\n")
    (workdir / ".config.yaml").write_text("VM_QUOTA: 3\n")
    done = cli("run", "params.csv", cwd=workdir)
    assert done.returncode == 2
    assert "VM_QUOTA" in done.stderr and ".config.yaml" in done.stderr and "VM_QUOTAS" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (workdir / ".parallel-engine").exists()


@pytest.mark.parametrize(("flag", "named"), [
    (["--set", "RETRIES=-1"], "--set RETRIES"),
    (["--retries", "-1"], "flag --retries"),
])
def test_bad_flag_value_names_the_flag_as_it_was_given(workdir: Path, flag: list[str], named: str) -> None:
    (workdir / "params.csv").write_text("x\n1\n")
    done = cli("run", "params.csv", *flag, cwd=workdir)
    assert done.returncode == 2
    (line,) = error_lines(done.stderr)
    assert f"RETRIES from {named} must be an integer >= 0" in line


def test_gce_backend_without_its_keys_names_them_and_exits_2(workdir: Path) -> None:
    (workdir / "params.csv").write_text("x\n1\n")
    done = cli("run", "params.csv", "--backend", "gce", cwd=workdir)
    assert done.returncode == 2
    for key in ("ZONE", "BUCKET"):  # PROJECT_ID may come from the credentials: asked for once they are loaded
        assert key in done.stderr
    assert "Traceback" not in done.stderr
