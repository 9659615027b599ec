"""The per-VM metadata server, read from inside a VM with curl as a startup script would."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1, storage

from tests.emulator.emulator_helpers import (
    TIME_SCALE,
    Clients,
    FixedToken,
    console,
    make_instance,
    wait_for,
)

PROBE = r"""
MD="http://${GCE_METADATA_HOST}/computeMetadata/v1"
H='Metadata-Flavor: Google'
for path in instance/name instance/zone instance/id project/project-id project/numeric-project-id \
    instance/attributes/ instance/attributes/task-id instance/preempted \
    instance/service-accounts/default/email; do
  echo "$path=$(curl -sf -H "$H" "$MD/$path" | tr '\n' ',')"
done
echo "no-header=$(curl -s -o /dev/null -w '%{http_code}' "$MD/instance/name")"
echo "forwarded=$(curl -s -o /dev/null -w '%{http_code}' -H "$H" -H 'X-Forwarded-For: 1.2.3.4' "$MD/instance/name")"
echo "missing=$(curl -s -o /dev/null -w '%{http_code}' -H "$H" "$MD/instance/attributes/nope")"
echo "token=$(curl -sf -H "$H" "$MD/instance/service-accounts/default/token")"
echo "account=$(curl -sf -H "$H" "$MD/instance/service-accounts/default/?recursive=true")"
echo "ping=$(curl -s -D - -o /dev/null "http://${GCE_METADATA_IP}/" | grep -i '^metadata-flavor' | tr -d '\r')"
echo probe-done
"""


def _values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("PATH"))


def test_metadata_server_answers_what_a_startup_script_asks(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("probe", script=PROBE, metadata={"task-id": "t-7"})))
    text = wait_for(lambda: (t := console(clients, "probe")) and "probe-done" in t and t, what="probe")
    values = _values(text)
    cloud = clients.cloud
    instance = clients.get("probe")
    email = f"{cloud.project_number}-compute@developer.gserviceaccount.com"
    assert values["instance/name"] == "probe"
    assert values["instance/zone"] == f"projects/{cloud.project_number}/zones/{cloud.zone}"
    assert values["instance/id"] == str(instance.id)
    assert values["project/project-id"] == cloud.project
    assert values["project/numeric-project-id"] == str(cloud.project_number)
    assert values["instance/attributes/"] == "startup-script,task-id,"
    assert values["instance/attributes/task-id"] == "t-7"
    assert values["instance/preempted"] == "FALSE"
    assert values["instance/service-accounts/default/email"] == email
    assert (values["no-header"], values["forwarded"], values["missing"]) == ("403", "403", "404")
    token = json.loads(values["token"])
    assert set(token) == {"access_token", "expires_in", "token_type"} and token["token_type"] == "Bearer"
    account = json.loads(values["account"])
    assert account["email"] == email and account["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    assert values["ping"].lower() == "metadata-flavor: google"


def test_vm_without_service_account_gets_no_token(clients: Clients) -> None:
    instance = make_instance("no-sa", script=PROBE)
    del instance.service_accounts[:]
    clients.wait(clients.insert(instance))
    text = wait_for(lambda: (t := console(clients, "no-sa")) and "probe-done" in t and t, what="probe")
    assert _values(text)["token"] == ""


def test_docker_credential_helper_stand_in_needs_a_writable_docker_config(clients: Clients) -> None:
    script = r"""
docker-credential-gcr configure-docker --registries=us-docker.pkg.dev && echo unexpected
export DOCKER_CONFIG=$(mktemp -d)
docker-credential-gcr configure-docker --registries=us-docker.pkg.dev,127.0.0.1:5000
cat "$DOCKER_CONFIG/config.json"
echo us-docker.pkg.dev | docker-credential-gcr get
echo helper-done
"""
    clients.wait(clients.insert(make_instance("creds", script=script)))
    text = wait_for(lambda: (t := console(clients, "creds")) and "helper-done" in t and t, what="helper")
    assert "unexpected" not in text and "read-only" in text
    assert '"us-docker.pkg.dev": "gcr"' in text and '"127.0.0.1:5000": "gcr"' in text
    assert '"Secret":"ya29.' in text


def _metadata_token(clients: Clients, name: str) -> dict:
    """The VM's token as its metadata server hands it out (read from here, as a VM's process would)."""
    host = next(vm["metadataHost"] for vm in clients.cloud.control.vms() if vm["name"] == name)
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Metadata-Flavor": "Google"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _clients_with_token(clients: Clients, token: str) -> tuple[compute_v1.InstancesClient, storage.Client]:
    credentials = FixedToken(token)
    instances = compute_v1.InstancesClient(
        client_options={"api_endpoint": clients.cloud.compute_endpoint}, credentials=credentials
    )
    gcs = storage.Client(project=clients.project, credentials=credentials,
                         client_options={"api_endpoint": clients.cloud.storage_endpoint})  # fmt: skip
    return instances, gcs


def _works_with(clients: Clients, token: str) -> None:
    instances, gcs = _clients_with_token(clients, token)
    assert instances.get(project=clients.project, zone=clients.zone, instance="holder").name == "holder"
    gcs.bucket(clients.cloud.bucket).blob("with-token").upload_from_string("x")


def _refused_with(clients: Clients, token: str) -> None:
    instances, gcs = _clients_with_token(clients, token)
    with pytest.raises(gexc.Unauthorized) as compute_refusal:
        instances.get(project=clients.project, zone=clients.zone, instance="holder")
    with pytest.raises(gexc.Unauthorized) as storage_refusal:
        gcs.get_bucket(clients.cloud.bucket, retry=None)
    assert compute_refusal.value.errors[0]["reason"] == "authError"
    assert storage_refusal.value.errors[0]["reason"] == "authError"
    with pytest.raises(gexc.Unauthorized):
        gcs.bucket(clients.cloud.bucket).blob("with-token").upload_from_string("x", retry=None)


def test_metadata_tokens_expire_on_the_scaled_clock(clients: Clients) -> None:
    clients.cloud.control.set_clock(token_lifetime_seconds=100)  # 1 s at this time scale
    clients.wait(clients.insert(make_instance("holder", script="sleep 300")))
    clients.wait_status("holder", "RUNNING")
    first = _metadata_token(clients, "holder")
    issued = time.monotonic()  # the token was minted before this: it is dead by issued + its lifetime
    assert first["expires_in"] <= 1  # real seconds left, what a client's own clock measures
    _works_with(clients, first["access_token"])
    while time.monotonic() < issued + 100 * TIME_SCALE:  # past its lifetime, however long the request took
        time.sleep(0.05)
    _refused_with(clients, first["access_token"])
    second = _metadata_token(clients, "holder")
    assert second["access_token"] != first["access_token"]
    _works_with(clients, second["access_token"])
    compute = clients.cloud.control.calls()["compute"]
    assert list(compute["byVm"]) == ["holder"]  # its expired token still says whose call it was
    assert compute["byMethod"]["compute.instances.get"]["vm"] == compute["byVm"]["holder"]


def test_a_bearer_token_the_emulator_never_issued_is_401(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("holder")))
    _refused_with(clients, "ya29.made-up")
    assert clients.get("holder").name == "holder"  # the user's own credentials: welcome
    calls = clients.cloud.control.calls()
    assert calls["compute"]["byCaller"]["unknown"] >= 1 and calls["compute"]["byVm"] == {}
    assert set(calls["storage"]["byCaller"]) == {"unknown"}


def test_wait_for_change_with_a_stale_etag_answers_at_once(clients: Clients) -> None:
    """As Google's: a `last_etag` that no longer matches means the value changed since that read, so
    the wait returns the new value now (without it, a flip just before the wait would be missed)."""
    clients.cloud.control.set_clock(preemption_notice_seconds=3000)  # 30 s here: the VM stays up meanwhile
    clients.wait(clients.insert(make_instance("spot-e", spot=True, script="sleep 300")))
    host = wait_for(lambda: next((vm["metadataHost"] for vm in clients.cloud.control.vms() if vm["metadataHost"]), None),
                    what="the metadata server")  # fmt: skip
    url = f"http://{host}/computeMetadata/v1/instance/preempted"
    flavor = {"Metadata-Flavor": "Google"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=flavor), timeout=10) as response:
        assert response.read() == b"FALSE"
        etag = response.headers["ETag"]
    clients.cloud.control.preempt("spot-e")
    waiting = urllib.request.Request(f"{url}?wait_for_change=true&timeout_sec=600&last_etag={etag}", headers=flavor)
    with urllib.request.urlopen(waiting, timeout=10) as response:  # a wait for another change would time out
        assert response.read() == b"TRUE"
        assert response.headers["ETag"] != etag
