"""Who is calling: a VM's calls are told from the orchestrator's, with or without a token; a call
without a valid token is refused (401) whoever makes it, as on Google."""

from __future__ import annotations

import re

from tests.emulator.emulator_helpers import Clients, console, make_instance, wait_for

CALLS = r"""
MD="http://${GCE_METADATA_HOST}/computeMetadata/v1"
H='Metadata-Flavor: Google'
INSTANCE="__COMPUTE__/compute/v1/projects/__PROJECT__/zones/__ZONE__/instances/$(curl -sf -H "$H" "$MD/instance/name")"
OBJECTS="__STORAGE__/storage/v1/b/__BUCKET__/o"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
echo "compute-anonymous=$(code "$INSTANCE")"
echo "storage-anonymous=$(code "$OBJECTS")"
echo "storage-cleared-env=$(env -i "$(command -v curl)" -s -o /dev/null -w '%{http_code}' "$OBJECTS")"
bash -c 'curl -s -o /dev/null -w "%{http_code}" "$1" >"$2.part" && mv "$2.part" "$2" &' _ "$OBJECTS" "$TMPDIR/escaped"
while [[ ! -e $TMPDIR/escaped ]]; do sleep 0.02; done
echo "storage-escaped=$(cat "$TMPDIR/escaped")"
json=$(curl -sf -H "$H" "$MD/instance/service-accounts/default/token")
[[ $json =~ \"access_token\":\ *\"([^\"]+)\" ]]
echo "compute-token=$(code -H "Authorization: Bearer ${BASH_REMATCH[1]}" "$INSTANCE")"
echo "storage-token=$(code -H "Authorization: Bearer ${BASH_REMATCH[1]}" "$OBJECTS")"
echo calls-done
"""


def _script(clients: Clients) -> str:
    cloud = clients.cloud
    values = {"__COMPUTE__": cloud.compute_endpoint, "__STORAGE__": cloud.storage_endpoint,
              "__PROJECT__": cloud.project, "__ZONE__": cloud.zone, "__BUCKET__": cloud.bucket}  # fmt: skip
    script = CALLS
    for key, value in values.items():
        script = script.replace(key, value)
    return script


def _values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[a-z-]+=", line))


def test_a_vm_call_without_a_token_is_401_and_counted_under_the_vm(clients: Clients) -> None:
    clients.cloud.control.reset_calls()
    clients.wait(clients.insert(make_instance("caller", script=_script(clients))))
    text = wait_for(lambda: (t := console(clients, "caller")) and "calls-done" in t and t, what="the calls")
    values = _values(text)
    assert values["compute-anonymous"] == "401" and values["storage-anonymous"] == "401"
    assert values["storage-cleared-env"] == "401"  # no GCE_METADATA_HOST left, still the VM's child
    assert values["storage-escaped"] == "401"  # orphaned (re-parented), still the VM's environment
    assert values["compute-token"] == "200" and values["storage-token"] == "200"
    calls = clients.cloud.control.calls()
    assert calls["compute"]["byVm"] == {"caller": 2}
    assert calls["compute"]["byMethod"]["compute.instances.get"] == {"vm": 2}
    assert calls["storage"]["byVm"] == {"caller": 4}
    assert calls["storage"]["byMethod"]["storage.objects.list"] == {"vm": 4}


def test_token_less_calls_from_other_processes_are_refused_and_no_vms(clients: Clients) -> None:
    import subprocess

    clients.wait(clients.insert(make_instance("bystander", script="sleep 300")))
    clients.wait_status("bystander", "RUNNING")
    clients.cloud.control.reset_calls()
    url = f"{clients.cloud.storage_endpoint}/storage/v1/b/{clients.cloud.bucket}/o"
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True)
    assert out.stdout == "401"  # another process of this machine, not a VM's: no token, no entry
    authorized = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", clients.auth(), url]
    assert subprocess.run(authorized, capture_output=True, text=True).stdout == "200"  # the user's token
    list(clients.storage.list_blobs(clients.cloud.bucket))  # this process's own client, the user's credentials
    storage = clients.cloud.control.calls()["storage"]
    assert storage["byCaller"]["unknown"] == 1 and set(storage["byCaller"]) == {"unknown", "orchestrator"}
    assert storage["byVm"] == {}
