"""API keys: generation, hashing and the kinds of key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from enum import StrEnum


class KeyKind(StrEnum):
    """What a key may do: write = ingest, read = query APIs, server = privacy and settings."""

    WRITE = "write"
    READ = "read"
    SERVER = "server"


_PREFIX = {KeyKind.WRITE: "jw_", KeyKind.READ: "jr_", KeyKind.SERVER: "js_"}


def new_key(kind: KeyKind) -> str:
    """A fresh random key (192 bits) with a prefix that tells its kind at a glance."""
    return _PREFIX[kind] + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """Keys carry 192 random bits, so a fast hash is enough: no brute force is feasible."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Constant-time comparison of two key hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def basic_auth_user(header: str | None) -> str | None:
    """The user part of an HTTP Basic header (`base64(key + ":")`), or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, _, _ = decoded.partition(":")
    return user or None


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
