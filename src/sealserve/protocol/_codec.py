"""The byte forms on the wire: canonical JSON and unpadded base64url, one spelling each."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

__all__ = ["b64decode", "b64encode", "canonical_json"]


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, ASCII."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def b64encode(data: bytes) -> str:
    """Unpadded base64url of ``data``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str, *, name: str = "value") -> bytes:
    """Decode unpadded (or padded) base64url; ``ValueError`` naming ``name`` otherwise.

    Only the one encoding of the bytes is accepted: the alphabet is base64url's and the unused
    low bits of the last character must be zero, so no two strings decode to the same value (a
    signature or a key cannot be re-spelled past a check that compares strings)."""
    if not isinstance(text, str):
        raise ValueError(f"{name} is not base64url")
    stripped = text.rstrip("=")
    try:
        decoded = base64.b64decode(
            stripped + "=" * (-len(stripped) % 4), altchars=b"-_", validate=True
        )
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not base64url") from None
    if b64encode(decoded) != stripped:  # '+' or '/', or set unused bits
        raise ValueError(f"{name} is not base64url (not its canonical encoding)")
    return decoded
