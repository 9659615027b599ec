"""The VM worker in Python (`python -m parallel_engine.worker`), speaking docs/worker-protocol.md.

Not yet what VMs run: they still boot the bash startup script (backends/gce/templates). This
package is the worker that will run in its own container beside the task containers.
"""
