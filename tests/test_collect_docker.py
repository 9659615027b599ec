"""`collect` after the docker runtime: a link made inside a container is listed, never resolved on the host."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.collect_helpers import staging_left, tree
from tests.helpers import cli, printed_run_id

pytestmark = pytest.mark.docker

SCRIPT = r"""
set -e
o=$PE_OUTPUT_DIR
echo kept > $o/value.txt
echo inside > /tmp/inside.txt
ln -s /etc/hostname $o/host-file
ln -s /tmp/inside.txt $o/container-file
ln -s ../../../../run.json $o/climbs
ln -s / $o/root
mkfifo $o/pipe
"""


def test_a_link_made_inside_a_container_is_listed_and_never_resolved_on_the_host(
    tmp_path: Path, base_image: str, docker_engine: Any
) -> None:
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "a", "command": ["sh", "-c", SCRIPT]}]}))
    done = cli("run", "tasks.yaml", "--runtime", "docker", "--image", base_image, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = printed_run_id(done)
    collected = cli("collect", run_id, "--dest", "res", cwd=tmp_path, timeout=120)
    assert collected.returncode == 0, collected.stderr
    assert tree(tmp_path / "res" / "a") == {"value.txt": b"kept\n"}
    with open(tmp_path / "res" / "skipped.csv", newline="", encoding="utf-8") as handle:
        rows = {(r["path"], r["kind"], r["detail"]) for r in csv.DictReader(handle)}
    assert rows == {
        ("host-file", "link", "/etc/hostname"),
        ("container-file", "link", "/tmp/inside.txt"),
        ("climbs", "link", "../../../../run.json"),
        ("root", "link", "/"),
        ("pipe", "fifo", ""),
    }
    host_name = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else b"\0never"
    assert all(p.is_dir() or p.read_bytes() != host_name for p in (tmp_path / "res").rglob("*"))
    assert staging_left(tmp_path / "res") == []
