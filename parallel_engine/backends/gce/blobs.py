"""The run store in a bucket: the same keys as on local disk, under gs://BUCKET/PREFIX."""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from parallel_engine.backends.gce.credentials import access_error
from parallel_engine.errors import BackendError, StoreError
from parallel_engine.backends.gce.clients import is_google_error
from parallel_engine.nofollow import NAME_ERRNOS, Listing, Pairs, Skipped, Skips

if TYPE_CHECKING:
    from google.cloud import storage

T = TypeVar("T")
READERS = 8  # concurrent reads in read_many, within requests' pool of 10 connections (as fetch)
_HINT = "check the bucket, your credentials and STORAGE_ENDPOINT"


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    """The boundary: refused credentials or a missing permission are an AccessError with the fix;
    another Storage failure the client's own retries did not cure is a BackendError."""

    @functools.wraps(method)
    def wrapper(self: GCSBlobs, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            refused = access_error(exc, "storage", project=str(self.client.project or ""))
            if refused is not None:
                raise refused from exc
            if is_google_error(exc):
                # The object (or the prefix listed) when the call names one; fetch takes a list.
                where = self._name(args[0]) if args and isinstance(args[0], str) else self.prefix
                raise BackendError(f"Cloud Storage (gs://{self.bucket.name}/{where}): {exc}", hint=_HINT) from exc
            raise

    return wrapper


class GCSBlobs:
    """`Blobs` over Google Cloud Storage; a claim is an upload with ifGenerationMatch=0."""

    def __init__(self, client: storage.Client, bucket: str, prefix: str = "") -> None:
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.bucket = client.bucket(bucket)
        self.client = client
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._exceptions = exceptions
        # Our writes replace whole objects with the same bytes: safe to retry.
        self._retry = DEFAULT_RETRY

    def _name(self, key: str) -> str:
        return self.prefix + key

    def link(self, source: str, target: str) -> bool:
        return False  # a server-side copy costs a call like the tiny upload it would replace

    def add_folders(self, prefixes: Sequence[str]) -> None:
        pass  # a bucket has no folders

    @_translated
    def write(self, key: str, data: bytes) -> None:
        self.bucket.blob(self._name(key)).upload_from_string(data, retry=self._retry)

    @_translated
    def create(self, key: str, data: bytes) -> bool:
        blob = self.bucket.blob(self._name(key))
        try:
            blob.upload_from_string(data, if_generation_match=0, retry=self._retry)
            return True
        except self._exceptions.PreconditionFailed:
            # A retried create whose first try landed also gets 412: it is ours if the bytes are
            # (claims hold the claimant's unique name).
            return self.read(key) == data

    @_translated
    def read(self, key: str) -> bytes | None:
        try:
            data: bytes = self.bucket.blob(self._name(key)).download_as_bytes(retry=self._retry)
            return data
        except self._exceptions.NotFound:
            return None

    @_translated
    def read_from(self, key: str, start: int) -> bytes | None:
        """One ranged read; Storage answers 416 when the object holds no byte past `start`."""
        if start == 0:
            return self.read(key)
        try:
            data: bytes = self.bucket.blob(self._name(key)).download_as_bytes(start=start, retry=self._retry)
            return data
        except self._exceptions.NotFound:
            return None
        except self._exceptions.RequestRangeNotSatisfiable:
            return b""

    def read_many(self, keys: list[str]) -> list[bytes | None]:
        """Concurrent reads (threads: each is a round trip): 50,000 records one after the other
        would take minutes."""
        if len(keys) < 2:
            return [self.read(key) for key in keys]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=READERS) as pool:
            return list(pool.map(self.read, keys))

    @_translated
    def delete(self, key: str) -> None:
        try:
            self.bucket.blob(self._name(key)).delete(retry=self._retry)
        except self._exceptions.NotFound:
            pass

    @_translated
    def list(self, prefix: str, start_after: str = "") -> list[str]:
        name = self._name(prefix)
        offset = {"start_offset": self._name(start_after)} if start_after else {}
        keys = [
            blob.name[len(self.prefix):]
            for blob in self.client.list_blobs(self.bucket, prefix=name, retry=self._retry, **offset)
        ]
        return sorted(key for key in keys if key > start_after)

    @_translated
    def versions(self, prefix: str) -> dict[str, tuple[int, str]]:
        """{key: (generation, md5)} under `prefix`, from one listing: a rewrite shows as a new
        generation, new content as a new md5, without reading any object."""
        fields = "items(name,generation,md5Hash),nextPageToken"
        return {
            blob.name[len(self.prefix):]: (int(blob.generation or 0), blob.md5_hash or "")
            for blob in self.client.list_blobs(self.bucket, prefix=self._name(prefix), fields=fields, retry=self._retry)
        }

    @_translated
    def children(self, prefix: str) -> builtins.list[str]:  # `list` is a method here
        iterator = self.client.list_blobs(self.bucket, prefix=self._name(prefix), delimiter="/", retry=self._retry)
        names = {blob.name.rsplit("/", 1)[-1] for blob in iterator}
        names |= {p.rstrip("/").rsplit("/", 1)[-1] for p in iterator.prefixes}
        return sorted(names)

    def scan(self, prefix: str) -> Listing:
        return self.list(prefix), []  # a bucket holds objects only: no links, no special files

    @_translated
    def fetch(self, pairs: Pairs) -> Skips:
        """Concurrent downloads with transfer_manager (threads: the work is network-bound). An
        object deleted since the listing is skipped; any other failure stops the fetch."""
        from google.cloud.storage import transfer_manager

        if not pairs:
            return []
        outcomes = transfer_manager.download_many(
            [(self.bucket.blob(self._name(key)), str(target)) for key, target in pairs],
            max_workers=8, worker_type=transfer_manager.THREAD, raise_exception=False,
        )
        skipped: list[Skipped] = []
        failures: list[tuple[str, Path, BaseException]] = []
        for (key, target), outcome in zip(pairs, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                continue
            with contextlib.suppress(OSError):
                os.unlink(target)  # what a failed download wrote: never half a file
            if isinstance(outcome, self._exceptions.NotFound):
                skipped.append(Skipped(key, "gone", "deleted since it was listed"))
            elif isinstance(outcome, OSError) and outcome.errno in NAME_ERRNOS and not is_google_error(outcome):
                skipped.append(Skipped(key, "name refused here", outcome.strerror or str(outcome)))
            else:
                failures.append((key, target, outcome))
        if failures:
            key, target, exc = failures[0]
            if isinstance(exc, OSError) and not is_google_error(exc):
                raise StoreError(f"cannot write {target}: {exc.strerror or exc}",
                                 hint="check that you may write there, and free space") from exc
            raise BackendError(f"Cloud Storage (gs://{self.bucket.name}/{self._name(key)}): {exc}",
                               hint=_HINT) from exc
        return skipped

    def local_path(self, key: str) -> Path | None:
        return None
