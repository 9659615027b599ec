"""The emulated Compute Engine v1 REST API (instances, zone operations, machine types, regions)."""
