"""The emulated Google cloud on 127.0.0.1, no Google account: OAuth, Compute, Storage, metadata,
Cloud Build, a registry.

The real Google clients and a real VM startup script run against it unchanged, with credentials
it hands out (an ADC file and a service-account key refreshing at its token endpoint): a call
without a valid token gets 401, as on Google. It imports nothing from the orchestrator: it only
speaks HTTP, as Google does.

    with Emulator(time_scale=0.01) as cloud:
        creds = Credentials.from_authorized_user_file(str(cloud.credentials_file)).with_token_uri(cloud.token_uri)
        compute_v1.InstancesClient(client_options=cloud.client_options(), credentials=creds)
"""

from __future__ import annotations

from parallel_engine.emulator.clock import Durations
from parallel_engine.emulator.cloud import Emulator
from parallel_engine.emulator.control import ControlClient, ControlError

# Imported, not wrapped: importing the submodule `serve` rebinds the package's `serve` to that
# module, so a lazy wrapper was replaced by the module as soon as anything imported it.
from parallel_engine.emulator.serve import serve

__all__ = ["ControlClient", "ControlError", "Durations", "Emulator", "serve"]
