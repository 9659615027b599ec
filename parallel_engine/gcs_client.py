"""The one way this package makes a google-cloud-storage Client: without the library's
background bucket probes.

google-cloud-storage 3.11+ (App-centric Observability) starts a thread that calls
`storage.buckets.get` on a client's first use of a bucket, and `buckets.get` again after any
404, such as reading a status not written yet. We never use what they fetch (span attributes),
they need a permission an object-only account lacks (each refusal an ERROR in the audit log,
googleapis/google-cloud-python#17650), share the upload transport (#18116) and make the calls
a poll costs vary with thread timing. The maintainers' switch is an environment variable; an
explicit setting by the user is kept.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud import storage

NO_BUCKET_PROBES = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"


def storage_client(**kwargs: Any) -> storage.Client:
    from google.cloud import storage

    os.environ.setdefault(NO_BUCKET_PROBES, "true")
    return storage.Client(**kwargs)
