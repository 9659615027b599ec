"""An attempt's live log mirrored to its object, sending only what is new (docs/worker-protocol.md).

A log file only grows (the docker runtime appends to it). Re-sending it whole at every interval
costs O(n²) bytes over an attempt; instead the new bytes go up as the log's temporary tail object
(`runs/<run>/tails/<task>.<attempt>.<log>`, overwritten by each append, deleted by the final
sync) and are composed onto the log (`[log, tail] -> log`, with the log's generation as
precondition). Each compose answers the composite's size and crc32c: when they are not those of
the bytes we sent (a retried compose landed twice: the emulator's fake-gcs-server keeps the
generation on compose, so the precondition does not stop it there), or a call fails (412:
something else wrote the object), the file is uploaded whole again: the local file is the
truth. A log that did not grow since its last write is checked against Storage at the end and
uploaded whole if it differs.
A log below `WHOLE_BELOW` is uploaded whole: one call is cheaper than two (bench/log_append.py).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c

from parallel_engine.worker.bucket import RESUMABLE_FROM, WorkerBucket

#: Logs smaller than this go up whole (one call); larger ones by appends (two calls: the tail,
#: the compose). bench/log_append.py measures the crossover.
WHOLE_BELOW = 4 * 1024 * 1024
#: The most one append reads into memory; a sync sends a longer growth as several appends.
TAIL_MAX = 64 * 1024 * 1024
#: After this many appends in a row fail (a bucket that refuses composes), the log goes up whole.
APPEND_FAILURES_MAX = 3
CONTENT_TYPE = "text/plain; charset=utf-8"


def crc32c_b64(value: int) -> str:
    """A crc32c as Cloud Storage reports it: base64 of its 4 big-endian bytes."""
    return base64.b64encode(value.to_bytes(4, "big")).decode()


class LiveLog:
    """One log file and its object. `sync` is best effort and never raises; `final` leaves the
    object equal to the file unless Storage keeps failing (then it logs why)."""

    def __init__(self, bucket: WorkerBucket, key: str, tail: str, path: Path,
                 log: Callable[[str], None] = print, whole_below: int | None = None) -> None:
        self.bucket = bucket
        self.key = key
        self.tail = tail  # the key of this log's temporary tail object
        self.path = path
        self.log = log
        self.whole_below = WHOLE_BELOW if whole_below is None else whole_below
        self.sent = 0  # bytes of the file the object is known to hold
        self.crc = 0  # their crc32c
        self.generation: int | None = None  # the object's, as we last wrote it (None: not yet)
        self.appends = 0
        self.bytes_sent = 0  # payload bytes that went over the wire (for bench/log_append.py)
        self.calls = 0
        self.tail_made = False  # the tail object may exist: `final` deletes it
        self.failures = 0  # appends that failed in a row

    def _blob(self, key: str) -> Any:
        return self.bucket.bucket.blob(self.bucket.root + key)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    # -- the two ways up ----------------------------------------------------------------------
    def _whole(self) -> None:
        """Upload the file as it is now; the object's size and crc32c become what we know."""
        blob = self._blob(self.key)
        with self._open() as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            if size > RESUMABLE_FROM:
                blob.chunk_size = RESUMABLE_FROM
            # The library checks what it sent against the crc32c Storage computed (checksum=).
            blob.upload_from_file(f, size=size, content_type=CONTENT_TYPE, checksum="crc32c", retry=self.bucket.retry)
            f.seek(0)
            crc = _crc_of(f, size)
        self.calls += 1
        self.bytes_sent += size
        self.sent, self.crc, self.generation = size, crc, int(blob.generation)

    def _open(self) -> BinaryIO:
        """The file, or no bytes when the container never created it."""
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            return io.BytesIO(b"")

    def _append(self, size: int) -> bool:
        """Send bytes [sent, size) (at most TAIL_MAX) as a tail composed onto the log. False, with
        the reason logged, when the object is not then exactly the file's first bytes."""
        with open(self.path, "rb") as f:
            f.seek(self.sent)
            data = f.read(min(size - self.sent, TAIL_MAX))
        crc = google_crc32c.extend(self.crc, data)
        tail = self._blob(self.tail)
        self.appends += 1
        self.tail_made = True
        try:
            tail.upload_from_string(data, content_type=CONTENT_TYPE, checksum="crc32c", retry=self.bucket.retry)
            self.calls += 1
            self.bytes_sent += len(data)
            dest = self._blob(self.key)
            dest.content_type = CONTENT_TYPE
            self.calls += 1
            dest.compose([self._blob(self.key), tail], if_generation_match=self.generation,
                         retry=self.bucket.retry)
        except Exception as exc:  # noqa: BLE001 - a failed append falls back to a whole upload
            self.log(f"{self.path.name}: append failed ({_short(exc)}): uploading it whole")
            return False
        expected = (self.sent + len(data), crc32c_b64(crc))
        if (int(dest.size or 0), dest.crc32c) != expected:
            self.log(f"{self.path.name}: the object is not the file after an append (size {dest.size}, "
                     f"expected {expected[0]}): uploading it whole")
            return False
        self.sent, self.crc, self.generation = expected[0], crc, int(dest.generation)
        return True

    # -- what the worker calls ----------------------------------------------------------------
    def sync(self) -> None:
        """Send what the file gained since the last sync (nothing when it did not grow)."""
        try:
            self._sync()
        except Exception as exc:  # noqa: BLE001 - live logs are best effort; the record is not
            self.log(f"upload of {self.path.name} failed: {_short(exc)}")

    def _sync(self) -> bool:
        """Whether it wrote the object (each write is checked against Storage's answer)."""
        size = self._size()
        if self.generation is not None and size == self.sent:
            return False
        if self.generation is None or size < self.sent or size < self.whole_below:
            self._whole()
            return True
        while self.sent < size:
            if self._append(size):
                self.failures = 0
                continue
            self.failures += 1
            if self.failures == APPEND_FAILURES_MAX:
                self.whole_below = 1 << 62
                self.log(f"{self.path.name}: {self.failures} appends in a row failed: uploading it whole from now on")
            self._whole()
            break
        return True

    def final(self) -> None:
        """The last sync: afterwards the object holds exactly the file, and no tail of this log is
        left behind. A log that did not grow since it was last written is checked against
        Storage's size and crc32c (one call) and uploaded whole if it differs."""
        try:
            if not self._sync() and not self._matches():
                self.log(f"{self.path.name}: the object differs from the file: uploading it whole")
                self._whole()
        except Exception as exc:  # noqa: BLE001 - the attempt's record is still written
            self.log(f"upload of {self.path.name} failed: {_short(exc)}")
        if self.tail_made:
            self._drop_tail()

    def _drop_tail(self) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self.calls += 1
            self._blob(self.tail).delete(retry=self.bucket.retry)
            self.tail_made = False
        except NotFound:
            self.tail_made = False  # never made (its upload failed), or a retried delete landed
        except Exception as exc:  # noqa: BLE001 - under tails/, nothing mistakes it for a log or an output
            self.log(f"{self.path.name}: could not delete the temporary {self.tail}: {_short(exc)}")

    def _matches(self) -> bool:
        """Whether the object is the file now: size and crc32c, the file's read again."""
        with self._open() as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            crc = _crc_of(f, size)
        blob = self.bucket.bucket.get_blob(self.bucket.root + self.key, retry=self.bucket.retry)
        self.calls += 1
        return blob is not None and (int(blob.size or 0), blob.crc32c) == (size, crc32c_b64(crc))


def _crc_of(f: BinaryIO, size: int, chunk: int = 1024 * 1024) -> int:
    crc, left = 0, size
    while left > 0:
        data = f.read(min(chunk, left))
        if not data:
            break
        crc = google_crc32c.extend(crc, data)
        left -= len(data)
    return crc


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
