"""Storage: the real google-cloud-storage client against fake-gcs-server behind the counting proxy."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.api_core import exceptions as gexc
from google.cloud.storage.retry import DEFAULT_RETRY

from tests.emulator.emulator_helpers import Clients


def test_bucket_upload_download_roundtrip(clients: Clients) -> None:
    bucket = clients.storage.create_bucket("roundtrip")
    bucket.blob("runs/r1/run.json").upload_from_string('{"x": 1}')
    assert bucket.blob("runs/r1/run.json").download_as_bytes() == b'{"x": 1}'
    assert clients.storage.bucket(clients.cloud.bucket).exists()  # the default bucket exists


def test_list_with_prefix_and_start_offset(clients: Clients) -> None:
    bucket = clients.storage.bucket(clients.cloud.bucket)
    for name in ["events/001-a", "events/002-b", "events/003-c", "other/x"]:
        bucket.blob(name).upload_from_string(name)
    names = [b.name for b in clients.storage.list_blobs(bucket, prefix="events/", start_offset="events/002")]
    assert names == ["events/002-b", "events/003-c"]


def test_if_generation_match_zero_is_an_atomic_create(clients: Clients) -> None:
    blob = clients.storage.bucket(clients.cloud.bucket).blob("claims/t1.1")
    blob.upload_from_string("worker-a", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed) as refused:
        blob.upload_from_string("worker-b", if_generation_match=0)
    assert refused.value.code == 412
    assert blob.download_as_bytes() == b"worker-a"


def _curl(clients: Clients, *args: str) -> tuple[int, dict]:
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-H", clients.auth(), *args],
                         capture_output=True, text=True, check=True)  # fmt: skip
    body, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(body) if body.strip() else {}


def test_precondition_failure_has_google_reason_on_every_upload_kind(clients: Clients) -> None:
    url = clients.cloud.storage_endpoint
    bucket = clients.cloud.bucket
    media = f"{url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name=claims%2Fm&ifGenerationMatch=0"
    assert _curl(clients, "-X", "POST", "--data-binary", "a", media)[0] == 200
    code, body = _curl(clients, "-X", "POST", "--data-binary", "b", media)  # fake-gcs-server alone would accept this
    assert (code, body["error"]["errors"][0]["reason"]) == (412, "conditionNotMet")
    multipart = (
        '--B\r\nContent-Type: application/json\r\n\r\n{"name":"claims/p"}\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n"
    )
    target = f"{url}/upload/storage/v1/b/{bucket}/o?uploadType=multipart&ifGenerationMatch=0"
    headers = ["-H", "Content-Type: multipart/related; boundary=B", "-X", "POST", "--data-binary", multipart, target]
    assert _curl(clients, *headers)[0] == 200
    code, body = _curl(clients, *headers)
    assert (code, body["error"]["errors"][0]["reason"]) == (412, "conditionNotMet")
    code, body = _curl(clients, f"{url}/storage/v1/b/{bucket}/o/missing")
    assert (code, body["error"]["errors"][0]["reason"]) == (404, "notFound")


def test_delete_honours_if_generation_match(clients: Clients) -> None:
    blob = clients.storage.bucket(clients.cloud.bucket).blob("x")
    blob.upload_from_string("1")
    blob.reload()
    with pytest.raises(gexc.PreconditionFailed):
        blob.delete(if_generation_match=blob.generation + 1)
    blob.delete(if_generation_match=blob.generation)
    assert not blob.exists()


def test_compose_honours_if_generation_match_of_its_destination(clients: Clients) -> None:
    bucket = clients.storage.bucket(clients.cloud.bucket)
    log, tail = bucket.blob("log"), bucket.blob("tail")
    log.upload_from_string(b"a")
    tail.upload_from_string(b"b")
    stale = log.generation
    log.upload_from_string(b"A")  # written by someone else: a new generation
    with pytest.raises(gexc.PreconditionFailed):  # fake-gcs-server alone composes anyway
        bucket.blob("log").compose([bucket.blob("log"), tail], if_generation_match=stale)
    assert bucket.blob("log").download_as_bytes() == b"A"
    bucket.blob("log").compose([bucket.blob("log"), tail], if_generation_match=log.generation)
    assert bucket.blob("log").download_as_bytes() == b"Ab"


def test_storage_503_is_injected_then_clears(clients: Clients) -> None:
    blob = clients.storage.bucket(clients.cloud.bucket).blob("data.txt")
    blob.upload_from_string("payload")
    clients.cloud.control.fail_next(2, status=503, method="GET", path=r"/o/data\.txt", service="storage")
    for _ in range(2):
        with pytest.raises(gexc.ServiceUnavailable):
            blob.download_as_bytes(retry=None)
    assert blob.download_as_bytes() == b"payload"
    counts = clients.cloud.control.calls()["storage"]
    assert counts["injected"] == {"storage.objects.get": 2}


def test_storage_client_retries_through_a_503_burst(clients: Clients) -> None:
    clients.cloud.control.fail_next(2, status=503, method="POST", path="/upload/", service="storage")
    blob = clients.storage.bucket(clients.cloud.bucket).blob("retried")
    blob.upload_from_string("ok", if_generation_match=0, retry=DEFAULT_RETRY.with_delay(initial=0.01, maximum=0.05))
    assert blob.download_as_bytes() == b"ok"
    assert clients.cloud.control.pending_faults()["storage"] == 0


def test_object_lists_page_at_one_thousand(clients: Clients) -> None:
    bucket = clients.cloud.bucket
    upload = f"{clients.cloud.storage_endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name="
    key, _, value = clients.auth().partition(": ")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: urllib.request.urlopen(urllib.request.Request(
            f"{upload}e{i:05d}", data=b"x", method="POST", headers={key: value})).close(), range(1003)))  # fmt: skip
    iterator = clients.storage.list_blobs(bucket, max_results=None)
    pages = [len(list(page)) for page in iterator.pages]
    assert pages == [1000, 3]
