"""Deterministic names that Google accepts: run ids, label values, VM names.

Why deterministic: the orchestrator can die and resume, so the name of a task's VM or a
label value must be derivable again from the same inputs, on any machine.

Rules:
- A run id is `YYYYMMDD-HHMMSS-xxxxx` in UTC plus 5 random lowercase letters/digits, so two
  runs of the same params.csv never clash, and ids sort by creation time. It is itself a valid
  label value (and a naive `now` is taken as UTC).
- `label_value` keeps lowercase letters, digits, `-` and `_`; `gce_name` keeps lowercase
  letters, digits and `-` and must start with a letter and end with a letter or digit.
  Upper case is lowered and every other character becomes `-`.
- Whenever the text had to be changed or cut to fit, `-` plus the first 8 hex digits of the
  SHA-256 of the original text is appended (the result still fits in 63 characters), so two
  originals that clean up to the same text still get different names. Text that is already
  valid is returned unchanged, without a suffix.
- `gce_name` prefixes `pe-` when the joined text does not start with a letter. That counts as
  a change (hash suffix), otherwise "1x" and "pe-1x" would both become "pe-1x".
- `gce_name` joins its parts with `-` before anything else, so ("a-b", "c") and ("a", "b-c")
  give the same name by design; `unique_names` is the guard against any collision.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from datetime import UTC, datetime

from parallel_engine.errors import NameCollisionError

MAX_LEN = 63
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
GCE_NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
RUN_ID_RE = re.compile(r"\d{8}-\d{6}-[a-z0-9]{5}")
GCE_PREFIX = "pe"

_RAND_ALPHABET = string.ascii_lowercase + string.digits
_RAND_LEN = 5
_HASH_LEN = 8


def short_hash(text: str) -> str:
    """8 hex digits of SHA-256: enough to keep cleaned-up names apart, short enough to fit."""
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:_HASH_LEN]


def new_run_id(now: datetime | None = None, rand: str | None = None) -> str:
    """A unique, time-sortable run id; `now` and `rand` are injectable for tests."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    else:
        now = now.astimezone(UTC)
    if rand is None:
        rand = "".join(secrets.choice(_RAND_ALPHABET) for _ in range(_RAND_LEN))
    elif len(rand) != _RAND_LEN or any(ch not in _RAND_ALPHABET for ch in rand):
        raise ValueError(f"rand must be {_RAND_LEN} lowercase letters or digits, got {rand!r}")
    return f"{now:%Y%m%d-%H%M%S}-{rand}"


def _replace_invalid(text: str, allowed: str) -> str:
    return "".join(ch if ch in allowed else "-" for ch in text.lower())


def _with_suffix(cleaned: str, original: str, strip: str = "") -> str:
    """Cut `cleaned` so that it + '-' + the hash of `original` fits in 63 characters."""
    base = cleaned[: MAX_LEN - 1 - _HASH_LEN].rstrip(strip)
    return f"{base}-{short_hash(original)}"


def label_value(text: str) -> str:
    """`text` as a GCE label value (lowercase, digits, `-`, `_`, at most 63 characters)."""
    cleaned = _replace_invalid(text, string.ascii_lowercase + string.digits + "-_")
    if cleaned == text and len(text) <= MAX_LEN:
        return text
    return _with_suffix(cleaned, text)


def gce_name(*parts: str) -> str:
    """`parts` joined with `-` as a valid GCE resource name (`[a-z]([-a-z0-9]{0,61}[a-z0-9])?`)."""
    original = "-".join(parts)
    cleaned = _replace_invalid(original, string.ascii_lowercase + string.digits + "-")
    if not cleaned[:1].isalpha():
        cleaned = f"{GCE_PREFIX}-{cleaned}"
    if cleaned == original and GCE_NAME_RE.fullmatch(cleaned):
        return cleaned
    # A name must end with a letter or digit: drop dashes the cut left before the suffix.
    return _with_suffix(cleaned, original, strip="-")


def vm_name(run_id: str, worker: str) -> str:
    """The VM of one worker of one run: readable in the console, unique per (run, worker)."""
    return gce_name(GCE_PREFIX, run_id, worker)


def unique_names(mapping: dict[str, str], what: str) -> None:
    """Refuse a derivation where two originals got the same name (one would overwrite the other)."""
    owner: dict[str, str] = {}
    clashes: list[tuple[str, str, str]] = []
    for original, derived in mapping.items():
        first = owner.setdefault(derived, original)
        if first != original:
            clashes.append((first, original, derived))
    if not clashes:
        return
    first, second, derived = clashes[0]
    more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
    raise NameCollisionError(
        f"{what} {first!r} and {second!r} both become the name {derived!r}{more}",
        hint=f"rename one of the {what}s so that they differ in more than case or punctuation",
    )
