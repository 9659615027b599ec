"""`parallel-engine report` of a gce run, read from the bucket: one lane per VM."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from parallel_engine.api import open_store
from parallel_engine.names import GCE_PREFIX
from parallel_engine.report import summary_rows, write_report
from tests.gce.gce_helpers import ExampleRun, config_for, settings
from tests.helpers import cli

pytestmark = [pytest.mark.emulator, pytest.mark.docker]


def test_report_of_a_gce_run_reads_the_bucket_and_draws_one_lane_per_vm(
    example_run_on_reuse_vms: ExampleRun, tmp_path: Path
) -> None:
    # The example's 12 tasks on 3 reuse VMs, the run test_gce_backend.py collects too.
    cloud, example_image, run = example_run_on_reuse_vms.cloud, example_run_on_reuse_vms.image, example_run_on_reuse_vms.run
    config = config_for(cloud, example_image, VM_QUOTAS=3)
    attempts = [attempt for view in run.status().tasks for attempt in view.attempts]
    assert len(attempts) == 12

    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image, VM_QUOTAS=3)))
    made = cli("report", run.run_id, "--png", "timeline.png", cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    assert (tmp_path / "report.html").stat().st_size > 0 and (tmp_path / "timeline.png").stat().st_size > 0

    data = write_report(open_store(config), run.run_id, tmp_path / "again.html")
    vms = {attempt.worker for attempt in attempts}
    assert set(data.lanes) == vms
    assert all(vm.startswith(f"{GCE_PREFIX}-{run.run_id}-") for vm in vms), vms  # the VMs' names
    assert sorted((b.task_id, b.worker) for b in data.bars) == sorted((a.task_id, a.worker) for a in attempts)
    assert all(b.start_known and b.end_known and b.state == "succeeded" for b in data.bars)
    assert "VM-hours running attempts" in dict(summary_rows(data))
