"""Cloud Storage's object-name rules, and the object names one JSON API request carries.

Google refuses a name that is empty, longer than 1,024 bytes of UTF-8, not UTF-8, holds a CR or LF,
or is `.` or `..` (400 `invalid`; empty: 400 `required`). fake-gcs-server accepts them all, so the
Storage proxy checks every name a request carries before forwarding it: the `name` query parameter
of media and resumable uploads, the JSON part of a multipart upload (or a resumable upload's JSON
body), and the percent-decoded `/o/{name}` segments of the path (gets, deletes, compose, rewrite).
"""

from __future__ import annotations

import json
import re
from email.message import Message
from typing import Any
from urllib.parse import unquote_to_bytes

MAX_NAME_BYTES = 1024
#: The path of an upload (media, multipart, resumable); group 1 is the bucket.
UPLOAD_PATH = re.compile(r"^/upload/storage/v1/b/([^/]+)/o/?$")
_OBJECT = re.compile(r"^/(?:download/)?storage/v1/b/[^/]+/o/(?P<rest>.+)$")
_COPY = re.compile(r"^(?P<source>[^/]+)/(?:copyTo|rewriteTo)/b/[^/]+/o/(?P<target>[^/]+)$")


class BadName(Exception):
    """A name Google refuses, always with 400: its reason and message."""

    status = 400

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_name(name: str | bytes | None) -> None:
    """Raise BadName unless `name` is a valid object name."""
    if name is None or name in ("", b""):
        raise BadName("required", "Required")
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogatepass")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadName("invalid", "The object name is not valid UTF-8.") from None
    if len(raw) > MAX_NAME_BYTES:
        raise BadName(
            "invalid",
            f"The maximum object length is {MAX_NAME_BYTES} characters, but got a name with {len(raw)} characters",
        )
    if "\r" in text or "\n" in text:
        raise BadName("invalid", "Disallowed unicode characters present in object name")
    if text in (".", ".."):
        raise BadName("invalid", f"Object name '{text}' is not valid: '.' and '..' are not allowed")


def names_of(
    method: str, path: str, query: dict[str, list[str]], content_type: str, body: bytes
) -> list[str | bytes | None]:
    """Every object name a request names: `method` on the URL `path` with `query` (parse_qs with blank
    values kept, so that an empty `name=` is seen) and `body`."""
    if UPLOAD_PATH.match(path):
        if method != "POST":
            return []  # a resumable session's later chunks name no object
        kind = (query.get("uploadType") or ["media"])[0]
        named: list[str | bytes | None] = list(query.get("name", []))
        if kind == "media":
            return named or [None]
        metadata = _multipart_metadata(content_type, body) if kind == "multipart" else _json(body)
        if "name" in metadata or not named:
            named.append(metadata.get("name"))
        return named
    match = _OBJECT.match(path)
    if match is None:
        return []
    rest = match.group("rest")
    if rest.endswith("/compose"):
        return [unquote_to_bytes(rest[: -len("/compose")])]
    if copy := _COPY.match(rest):
        return [unquote_to_bytes(copy.group("source")), unquote_to_bytes(copy.group("target"))]
    return [unquote_to_bytes(rest)]


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body) if body.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _multipart_metadata(content_type: str, body: bytes) -> dict[str, Any]:
    """The JSON metadata part (the first part) of a multipart/related upload; the media part is not read."""
    params = Message()
    params["Content-Type"] = content_type
    boundary = params.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return {}
    delimiter = b"--" + boundary.encode()
    start = body.find(delimiter)
    if start < 0:
        return {}
    end = body.find(b"\r\n" + delimiter, start + len(delimiter))
    part = body[start + len(delimiter) : end if end >= 0 else len(body)]
    _, _, payload = part.replace(b"\r\n", b"\n").partition(b"\n\n")
    return _json(payload)
