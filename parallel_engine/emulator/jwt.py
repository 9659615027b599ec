"""RS256 JSON Web Tokens, as far as Google's token endpoint needs them: read, check a signature,
check the time window, and make the key pair a service-account key file holds.

A service account proves itself with a JWT signed by its private key, either sent to the token
endpoint (the jwt-bearer grant) or sent to an API as the bearer token itself (a self-signed JWT).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PublicKey = rsa.RSAPublicKey
#: Google accepts an assertion at most an hour long, and a little clock skew.
MAX_LIFETIME_S = 3600
SKEW_S = 300


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, unverified; ValueError when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT: it has no three parts")
    try:
        header, claims = (json.loads(_b64decode(part)) for part in parts[:2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT: header and claims must be objects")
    return header, claims


def verify(token: str, key: PublicKey) -> bool:
    """Whether `token` is RS256-signed by `key`."""
    head, body, signature = token.split(".")
    if decode(token)[0].get("alg") != "RS256":
        return False
    try:
        key.verify(_b64decode(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def live(claims: dict[str, Any], now: float | None = None) -> bool:
    """Issued, not expired, and not meant to live longer than an hour (real time: the signer's clock)."""
    now = time.time() if now is None else now
    try:
        issued, expires = float(claims["iat"]), float(claims["exp"])
    except (KeyError, TypeError, ValueError):
        return False
    return issued - SKEW_S <= now < expires + SKEW_S and 0 < expires - issued <= MAX_LIFETIME_S


def new_key() -> tuple[str, str, PublicKey]:
    """(key id, private key PEM, public key) for a new service-account key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return secrets.token_hex(20), pem, private.public_key()
