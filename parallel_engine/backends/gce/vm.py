"""The VM request: one place that turns config + a startup script into Compute's JSON body.

Bodies are plain camelCase dicts (what `parallel-engine render --worker` prints, what Google
documents); `to_instance` / `to_bulk` convert them for google-cloud-compute.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from parallel_engine.names import GCE_PREFIX, gce_name
from parallel_engine.protocol import LABEL_RUN, LABEL_WORKER

if TYPE_CHECKING:
    from parallel_engine.config import Config

COS_IMAGE = "projects/cos-cloud/global/images/family/cos-stable"


def instance_properties(
    config: Config, zone: str, startup_script: str, run_id: str, worker_label: str
) -> dict[str, Any]:
    """Everything but the name: shared by bulkInsert's instanceProperties and a single insert."""
    region = zone.rsplit("-", 1)[0]
    interface: dict[str, Any] = {"network": f"global/networks/{config.network}"}
    if config.subnetwork:
        interface["subnetwork"] = f"regions/{region}/subnetworks/{config.subnetwork}"
    if config.external_ip:
        interface["accessConfigs"] = [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]
    scheduling: dict[str, Any] = {
        # The net under every leak: the VM deletes itself after this long, whatever happens.
        "maxRunDuration": {"seconds": str(int(config.max_run_duration))},
        "instanceTerminationAction": "DELETE",
    }
    if config.spot:
        scheduling.update(provisioningModel="SPOT", automaticRestart=False, onHostMaintenance="TERMINATE")
    return {
        "machineType": config.machine_type,
        "labels": {**config.labels, LABEL_RUN: run_id, LABEL_WORKER: worker_label},
        "disks": [{
            "boot": True,
            "autoDelete": True,
            "initializeParams": {"sourceImage": COS_IMAGE, "diskSizeGb": str(config.boot_disk_gb)},
        }],
        "networkInterfaces": [interface],
        "serviceAccounts": [{"email": config.service_account or "default", "scopes": list(config.scopes)}],
        "scheduling": scheduling,
        "metadata": {"items": [{"key": "startup-script", "value": startup_script}]},
    }


def task_vm_name(run_id: str, task_id: str, attempt: int) -> str:
    """The VM of one attempt (one VM per task)."""
    return gce_name(GCE_PREFIX, run_id, task_id, str(attempt))


def batch_name_pattern(run_id: str, batch: int) -> str:
    """bulkInsert's namePattern for the reuse workers of one batch: `...-b<batch>-001`, `-002`, ..."""
    return gce_name(GCE_PREFIX, run_id, f"b{batch}") + "-###"


def instance_body(properties: dict[str, Any], name: str, zone: str) -> dict[str, Any]:
    body = dict(properties, name=name)
    body["machineType"] = f"zones/{zone}/machineTypes/{properties['machineType']}"
    return body


def bulk_body(properties: dict[str, Any], name_pattern: str, count: int) -> dict[str, Any]:
    # minCount 1: take what capacity there is rather than nothing (the rest is asked for again).
    return {"count": str(count), "minCount": "1", "namePattern": name_pattern, "instanceProperties": properties}


def to_instance(body: dict[str, Any]) -> Any:
    from google.cloud import compute_v1

    return compute_v1.Instance.from_json(json.dumps(body))


def to_bulk(body: dict[str, Any]) -> Any:
    from google.cloud import compute_v1

    return compute_v1.BulkInsertInstanceResource.from_json(json.dumps(body))
