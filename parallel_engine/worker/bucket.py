"""The VM worker's side of the run store in a bucket (docs/worker-protocol.md, "Storage calls").

Everything goes through google-cloud-storage's JSON API with its own retry policy; the one call
that must know whether it was retried is the claim, which therefore retries itself.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parallel_engine.protocol import CLAIMS, OPEN, claim_key, run_prefix

if TYPE_CHECKING:
    from google.cloud import storage

#: Files over this size go up in resumable chunks (a failed chunk is resent, not the whole file).
RESUMABLE_FROM = 8 * 1024 * 1024
UPLOADERS = 8  # concurrent output uploads (transfer_manager threads)


def _transient(exc: BaseException) -> bool:
    from google.api_core import exceptions
    from requests import exceptions as http

    return isinstance(exc, (exceptions.TooManyRequests, exceptions.InternalServerError, exceptions.BadGateway,
                            exceptions.ServiceUnavailable, exceptions.GatewayTimeout,
                            http.ConnectionError, http.Timeout, ConnectionError))


class WorkerBucket:
    """Keys relative to the store root (`prefix`), as parallel_engine.protocol names them."""

    def __init__(self, client: storage.Client, bucket: str, prefix: str, tries: int = 8,
                 retry_base_s: float = 1.0, retry_max_s: float = 30.0) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.client = client
        self.bucket = client.bucket(bucket)
        self.root = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.tries = tries
        self.base = retry_base_s
        self.cap = retry_max_s
        # Whole-object writes of the same bytes are safe to repeat: the library's policy, bounded.
        self.retry = DEFAULT_RETRY.with_deadline(tries * retry_max_s).with_delay(
            initial=retry_base_s, maximum=retry_max_s)

    def _blob(self, key: str) -> Any:
        return self.bucket.blob(self.root + key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._blob(key).upload_from_string(data, content_type=content_type, retry=self.retry)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        """Upload a file, checked end to end (crc32c); big files in resumable chunks."""
        blob = self._blob(key)
        if path.stat().st_size > RESUMABLE_FROM:
            blob.chunk_size = RESUMABLE_FROM
        blob.upload_from_filename(str(path), content_type=content_type, checksum="crc32c", retry=self.retry)

    def put_files(self, pairs: list[tuple[str, Path]]) -> list[BaseException | None]:
        """Upload many files in parallel (transfer_manager, JSON API uploads); per pair, None or
        what failed after the retries. Never raises for one file."""
        from google.cloud.storage import transfer_manager

        if not pairs:
            return []
        blobs = []
        for key, path in pairs:
            blob = self._blob(key)
            try:
                if path.stat().st_size > RESUMABLE_FROM:
                    blob.chunk_size = RESUMABLE_FROM
            except OSError:
                pass  # gone: the upload reports it
            blobs.append((str(path), blob))
        outcomes = transfer_manager.upload_many(
            blobs, max_workers=UPLOADERS, worker_type=transfer_manager.THREAD, raise_exception=False,
            skip_if_exists=False, upload_kwargs={"checksum": "crc32c", "retry": self.retry},
        )
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    def get(self, key: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        try:
            data: bytes = self._blob(key).download_as_bytes(retry=self.retry)
            return data
        except NotFound:
            return None

    def claim(self, run_id: str, task_id: str, attempt: int, worker: str) -> bool:
        """Create the claim holding `worker`, if it does not exist. A 412 on the first try is never
        ours (the VM booted again: that claim is from its previous boot); after a retried try, the
        claim is read back: holding our name, the first try landed and its answer was lost."""
        from google.api_core.exceptions import PreconditionFailed

        key = claim_key(run_id, task_id, attempt)
        for tried in range(1, self.tries + 1):
            try:
                self._blob(key).upload_from_string(worker.encode(), if_generation_match=0, retry=None)
                return True
            except PreconditionFailed:
                return tried > 1 and self.get(key) == worker.encode()
            except Exception as exc:
                if not _transient(exc) or tried == self.tries:
                    raise
            self.backoff(tried)
        return False  # not reached: the last try raises

    def backoff(self, tried: int) -> None:
        """Exponential backoff with 50-100 % jitter, capped."""
        delay = min(self.cap, self.base * 2 ** (tried - 1))
        time.sleep(delay / 2 + random.random() * delay / 2)

    def open_attempts(self, run_id: str, start: str = "", page_size: int = 1000) -> Iterator[str]:
        """Names `<task>.<attempt>` under runs/<run>/open/, from `start` (inclusive) on, page by page."""
        return self._names(run_id, OPEN, start, page_size)

    def claimed_attempts(self, run_id: str, start: str = "", page_size: int = 1000) -> Iterator[str]:
        """Names `<task>.<attempt>` under runs/<run>/claims/, from `start` (inclusive) on, page by page."""
        return self._names(run_id, CLAIMS, start, page_size)

    def _names(self, run_id: str, folder: str, start: str, page_size: int) -> Iterator[str]:
        """Names under runs/<run>/<folder>, in Storage's (lexicographic) order, fetched lazily."""
        prefix = self.root + run_prefix(run_id) + folder
        offset = {"start_offset": prefix + start} if start else {}
        for blob in self.client.list_blobs(self.bucket, prefix=prefix, page_size=page_size,
                                           fields="items(name),nextPageToken", retry=self.retry, **offset):
            yield str(blob.name)[len(prefix):]
