"""Cloud Build through the whole emulator: faults from the control API, as the orchestrator sees them.

The build pipeline itself (source, steps, push, digests) is pinned by test_registry_and_build.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from google.api_core import exceptions as gexc
from google.cloud.devtools import cloudbuild_v1

from parallel_engine.emulator import Emulator
from tests.emulator.emulator_helpers import (
    FixedToken,
    cloudbuild_client,
    user_credentials,
    wait_for,
)

Status = cloudbuild_v1.Build.Status


def _sleeper() -> cloudbuild_v1.Build:
    step = cloudbuild_v1.BuildStep(name="python:3.11-slim", entrypoint="sleep", args=["300"])
    return cloudbuild_v1.Build(steps=[step])


def _ended(client: cloudbuild_v1.CloudBuildClient, project: str, build_id: str) -> cloudbuild_v1.Build:
    def ended() -> cloudbuild_v1.Build | None:
        build = client.get_build(project_id=project, id=build_id)
        return None if build.status in (Status.QUEUED, Status.WORKING) else build

    return wait_for(ended, timeout=30, what=f"build {build_id} to end")


def test_a_build_whose_answer_was_lost_was_still_created(cloud: Emulator) -> None:
    client = cloudbuild_client(cloud.cloudbuild_endpoint, user_credentials(cloud))
    cloud.control.fail_next(1, status=503, method="POST", path=r"/builds(\?|$)", service="cloudbuild", after=True)
    with pytest.raises(gexc.ServiceUnavailable):
        client.create_build(project_id=cloud.project, build=_sleeper())
    listed = list(client.list_builds(project_id=cloud.project))
    assert len(listed) == 1  # carried out: the fault only ate the answer
    client.cancel_build(project_id=cloud.project, id=listed[0].id)
    assert cloud.control.calls()["cloudbuild"]["injected"] == {"cloudbuild.builds.create": 1}


@pytest.mark.parametrize("status", ["INTERNAL_ERROR", "EXPIRED"])
def test_injected_build_failures_end_with_googles_status(cloud: Emulator, status: str) -> None:
    client = cloudbuild_client(cloud.cloudbuild_endpoint, user_credentials(cloud))
    cloud.control.fail_next_builds(1, status)
    operation = client.create_build(project_id=cloud.project, build=_sleeper())
    build = _ended(client, cloud.project, operation.metadata.build.id)
    assert build.status == Status[status]
    assert bool(build.start_time) == (status == "INTERNAL_ERROR")  # an expired build never started
    second = client.create_build(project_id=cloud.project, build=_sleeper())  # the fault was used up
    assert client.get_build(project_id=cloud.project, id=second.metadata.build.id).status in (
        Status.QUEUED, Status.WORKING)  # fmt: skip
    client.cancel_build(project_id=cloud.project, id=second.metadata.build.id)


def test_a_token_the_emulator_never_issued_or_none_is_401(cloud: Emulator) -> None:
    client = cloudbuild_client(cloud.cloudbuild_endpoint, credentials=FixedToken("ya29.x"))
    with pytest.raises(gexc.Unauthorized):
        list(client.list_builds(project_id=cloud.project))
    anonymous = urllib.request.Request(f"{cloud.cloudbuild_endpoint}/v1/projects/{cloud.project}/builds")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(anonymous, timeout=30)
    assert refused.value.code == 401 and json.load(refused.value)["error"]["status"] == "UNAUTHENTICATED"
    user = cloudbuild_client(cloud.cloudbuild_endpoint, user_credentials(cloud))
    assert list(user.list_builds(project_id=cloud.project)) == []  # the token endpoint's token: welcome
