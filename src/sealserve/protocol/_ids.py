"""The ids every party names things by: principals (owners, users), models and requests.

=============  ===============================================  ==============================
id             form                                             made by
=============  ===============================================  ==============================
principal      64 lowercase hex digits (SHA-256 of its          ``crypto.principal_id``
               Ed25519 public key): an owner or a user
model          ``<owner_id>/<name>``, name ``[A-Za-z0-9._-]``,   :func:`join_model_id`
               1 to 128, starting with a letter or digit
request        1 to 128 of ``[A-Za-z0-9._:-]``, starting with   :func:`new_request_id`
               a letter or digit (the client's choice)
=============  ===============================================  ==============================

Every check matches the whole string (``fullmatch``): a trailing newline is refused, as is
anything else after the id.  The ``*_PATTERN`` strings are the same rules as JSON Schema
patterns (anchored, for OpenAPI documents and path parameters).
"""

from __future__ import annotations

import re
import secrets
from typing import Final

__all__ = [
    "MODEL_NAME_PATTERN",
    "PRINCIPAL_ID_PATTERN",
    "check_principal_id",
    "check_request_id",
    "join_model_id",
    "new_request_id",
    "split_model_id",
]

_PRINCIPAL_CORE: Final = r"[0-9a-f]{64}"
_MODEL_NAME_CORE: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_REQUEST_ID_CORE: Final = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"

#: A principal id (owner or user) as an anchored JSON Schema pattern.
PRINCIPAL_ID_PATTERN: Final = f"^{_PRINCIPAL_CORE}$"
#: A model's name (the part after ``<owner_id>/``) as an anchored JSON Schema pattern.
MODEL_NAME_PATTERN: Final = f"^{_MODEL_NAME_CORE}$"

_PRINCIPAL_RE: Final = re.compile(_PRINCIPAL_CORE)
_MODEL_NAME_RE: Final = re.compile(_MODEL_NAME_CORE)
_REQUEST_ID_RE: Final = re.compile(_REQUEST_ID_CORE)


def check_principal_id(value: str, *, name: str = "principal_id") -> str:
    """``value`` if it is a principal id (64 lowercase hex digits); ``ValueError`` naming
    ``name`` and the value otherwise."""
    if not isinstance(value, str) or not _PRINCIPAL_RE.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits, got {value!r}")
    return value


def join_model_id(owner_id: str, name: str) -> str:
    """``<owner_id>/<name>``, validated: how a model is named everywhere."""
    check_principal_id(owner_id, name="owner_id")
    if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name):
        raise ValueError(
            f"model name must match {MODEL_NAME_PATTERN} (letters, digits, '.', '_', '-'; "
            f"at most 128), got {name!r}"
        )
    return f"{owner_id}/{name}"


def split_model_id(value: str) -> tuple[str, str]:
    """``(owner_id, model_name)`` of a model id; ``ValueError`` when it is not one."""
    if not isinstance(value, str) or value.count("/") != 1:
        raise ValueError(f"model id must be '<owner_id>/<model_name>', got {value!r}")
    owner, name = value.split("/")
    join_model_id(owner, name)
    return owner, name


def new_request_id() -> str:
    """A fresh request id (32 hex digits); a client makes one per inference."""
    return secrets.token_hex(16)


def check_request_id(request_id: str) -> str:
    """``request_id`` if it is 1 to 128 characters of ``[A-Za-z0-9._:-]`` starting with a
    letter or digit; ``ValueError`` naming the value otherwise."""
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        raise ValueError(
            f"request_id has value {request_id!r}. Use 1 to 128 characters of "
            "[A-Za-z0-9._:-] starting with a letter or digit."
        )
    return request_id
