"""Request and response bodies of the KeyService HTTP API (pydantic; they make the OpenAPI
document).  Binary values are unpadded base64url strings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sealserve.keyservice._wire import MAX_PAIRS, MODEL_NAME_PATTERN, PRINCIPAL_ID_PATTERN

__all__ = [
    "AttestationOut",
    "ChallengeOut",
    "EpochOut",
    "ErrorOut",
    "GrantIn",
    "GrantOut",
    "ModelKeyIn",
    "ModelKeyOut",
    "ModelOut",
    "PrincipalIn",
    "PrincipalOut",
    "ReleaseIn",
    "ReleaseOut",
    "ReleasePair",
    "ReleasedKeys",
    "RequestKeyIn",
    "RequestKeyOut",
]

B64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]*$", max_length=65536)]
PrincipalId = Annotated[str, Field(pattern=PRINCIPAL_ID_PATTERN)]
ModelId = Annotated[
    str, Field(pattern=PRINCIPAL_ID_PATTERN[:-1] + "/" + MODEL_NAME_PATTERN[1:], max_length=193)
]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
Policy = Annotated[
    dict[str, Any],
    Field(description="A runtime policy: the attest layer's Policy.to_dict() form."),
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrincipalIn(_In):
    public_key: B64 = Field(description="Raw Ed25519 public key of the principal.")
    role: Literal["owner", "user"]


class PrincipalOut(BaseModel):
    principal_id: str
    role: str
    created: bool = Field(description="False when this key was already registered.")


class ModelKeyIn(_In):
    version: Version = Field(description="1 to create the model; current + 1 to rotate its key.")
    wrapped_key: B64 = Field(
        description="The model key, HPKE-wrapped to the KeyService's attested public key."
    )


class ModelKeyOut(BaseModel):
    model_id: str
    version: int
    revocation_epoch: int


class ModelOut(BaseModel):
    model_id: str
    owner_id: str
    key_version: int
    grants: list[str]


class GrantIn(_In):
    policy: Policy


class GrantOut(BaseModel):
    model_id: str
    user_id: str
    revocation_epoch: int


class RequestKeyIn(_In):
    wrapped_key: B64 = Field(
        description="The request key, HPKE-wrapped to the KeyService's attested public key."
    )
    policy: Policy


class RequestKeyOut(BaseModel):
    model_id: str
    user_id: str
    version: int
    revocation_epoch: int


class EpochOut(BaseModel):
    revocation_epoch: int


class AttestationOut(BaseModel):
    evidence: str = Field(description="The KeyService's evidence (attest Evidence bytes).")
    hpke_public_key: str
    hpke_suite: str
    signing_public_key: str
    keyservice_id: str = Field(description="Hex SHA-256 of the binding its evidence carries.")


class ChallengeOut(BaseModel):
    nonce: str
    expires_at: float
    ttl_s: float


class ReleasePair(_In):
    user_id: PrincipalId
    model_id: ModelId


class ReleaseIn(_In):
    nonce: B64
    evidence: B64
    runtime_public_key: B64 = Field(description="The runtime's fresh HPKE public key.")
    pairs: list[ReleasePair] = Field(min_length=1, max_length=MAX_PAIRS)


class ReleasedKeys(BaseModel):
    user_id: str
    model_id: str
    model_key_version: int
    request_key_version: int
    wrapped_keys: str = Field(
        description="HPKE(runtime key, model key || request key), info as in docs/keyservice.md."
    )


class ReleaseOut(BaseModel):
    keyservice_id: str
    runtime_key_id: str
    nonce: str
    measurement: str
    revocation_epoch: int
    issued_at: float
    ttl_s: float
    expires_at: float
    keys: list[ReleasedKeys]
    signature: str = Field(description="Ed25519 signature by the KeyService's attested key.")


class ErrorOut(BaseModel):
    error: str
