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

from pathlib import Path
from typing import Any

from parallel_engine.emulator.clock import Durations
from parallel_engine.emulator.cloud import Emulator
from parallel_engine.emulator.control import ControlClient, ControlError

__all__ = ["ControlClient", "ControlError", "Durations", "Emulator", "serve"]


def serve(config_path: Path | None = None, time_scale: float = 1.0, **options: Any) -> int:
    """Run the emulated cloud until Ctrl-C, SIGTERM or SIGHUP (what `parallel-engine emulator` calls)."""
    from parallel_engine.emulator.serve import serve as _serve

    return _serve(config_path, time_scale, **options)
