"""The bodies of the KeyService's HTTP API, declared once.

The service parses requests and writes answers with these classes, its OpenAPI document
describes them from these classes, and the owner's, user's and runtime's clients build
requests and read answers with them (see :mod:`._schema` for the rules of a declaration).
Binary values are ``bytes`` here and unpadded base64url strings on the wire (one spelling:
the parser refuses any other).  Request bodies refuse unknown fields; answers
a client reads ignore fields it does not know (so the service may add some).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from sealserve.protocol._ids import MODEL_NAME_PATTERN, PRINCIPAL_ID_PATTERN
from sealserve.protocol._schema import Message, Rule
from sealserve.protocol._wire import MAX_PAIRS

__all__ = [
    "AccessChange",
    "AttestationOut",
    "ChallengeOut",
    "ErrorOut",
    "GrantIn",
    "ModelInfo",
    "ModelKeyIn",
    "ModelKeyReceipt",
    "PrincipalIn",
    "PrincipalOut",
    "ReleaseIn",
    "ReleaseOut",
    "ReleasePair",
    "ReplicaIn",
    "ReplicaOut",
    "RequestKeyIn",
    "RequestKeyReceipt",
    "RevocationPollIn",
    "RevocationPollOut",
    "WrappedPairKeys",
]

_B64 = Annotated[bytes, Rule(max_length=65536)]
_PrincipalId = Annotated[str, Rule(pattern=PRINCIPAL_ID_PATTERN)]
#: A key's fingerprint (hex SHA-256), the same form as a principal id.
_KeyId = Annotated[str, Rule(pattern=PRINCIPAL_ID_PATTERN)]
_ModelId = Annotated[
    str, Rule(pattern=PRINCIPAL_ID_PATTERN[:-1] + "/" + MODEL_NAME_PATTERN[1:], max_length=193)
]
_Version = Annotated[int, Rule(ge=1, le=2**31 - 1)]
_Epoch = Annotated[int, Rule(ge=0)]
_Policy = Annotated[
    dict[str, Any],
    Rule(description="A runtime policy: the attest layer's Policy.to_dict() form."),
]


class _Request(Message):
    __slots__ = ()
    extra_fields = False


# -- principals -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PrincipalIn(_Request):
    """``POST /v1/principals``: register the key that signs the request, with a role."""

    public_key: Annotated[_B64, Rule(description="Raw Ed25519 public key of the principal.")]
    role: Literal["owner", "user"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PrincipalOut(Message):
    """A registration: the principal's id and role, and whether it is new."""

    principal_id: str
    role: str
    created: Annotated[bool, Rule(description="False when this key was already registered.")]


# -- owner ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelKeyIn(_Request):
    """``PUT /v1/models/<owner>/<name>/key``: a model key version, wrapped to the service."""

    version: Annotated[
        _Version, Rule(description="1 to create the model; current + 1 to rotate its key.")
    ]
    wrapped_key: Annotated[
        _B64,
        Rule(description="The model key, HPKE-wrapped to the KeyService's attested public key."),
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelKeyReceipt(Message):
    """A stored model key: its version and the revocation epoch after storing it."""

    model_id: str
    version: int
    revocation_epoch: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo(Message):
    """A model as its owner sees it: the current key version and the users granted."""

    model_id: str
    owner_id: str
    key_version: int
    grants: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrantIn(_Request):
    """``PUT .../grants/<user>``: the runtime policy under which the user may use the model."""

    policy: _Policy


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AccessChange(Message):
    """What a grant, a revocation or a withdrawn request key did: the new revocation epoch
    (runtimes drop keys of older epochs when they see it)."""

    model_id: str
    user_id: str
    revocation_epoch: int


# -- user -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RequestKeyIn(_Request):
    """``PUT .../request-keys/<user>``: the user's request key and runtime policy."""

    wrapped_key: Annotated[
        _B64,
        Rule(description="The request key, HPKE-wrapped to the KeyService's attested public key."),
    ]
    policy: _Policy


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RequestKeyReceipt(Message):
    """A stored request key: the version the service gave it and the revocation epoch."""

    model_id: str
    user_id: str
    version: int
    revocation_epoch: int


# -- attestation and release ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AttestationOut(Message):
    """``GET /v1/attestation``: the KeyService's evidence and the two keys it binds."""

    evidence: Annotated[_B64, Rule(description="The KeyService's evidence (attest Evidence).")]
    hpke_public_key: _B64
    hpke_suite: str
    signing_public_key: _B64
    keyservice_id: Annotated[
        str, Rule(description="Hex SHA-256 of the binding its evidence carries.")
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ChallengeOut(Message):
    """``POST /v1/challenges``: a single-use nonce for the next release's evidence."""

    nonce: _B64
    expires_at: float
    ttl_s: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReleasePair(_Request):
    """One (user, model) pair whose keys a release asks for."""

    user_id: _PrincipalId
    model_id: _ModelId


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseIn(_Request):
    """``POST /v1/releases``: the runtime's evidence for a challenge, and the pairs."""

    nonce: _B64
    evidence: _B64
    runtime_public_key: Annotated[_B64, Rule(description="The runtime's fresh HPKE public key.")]
    pairs: Annotated[tuple[ReleasePair, ...], Rule(min_length=1, max_length=MAX_PAIRS)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WrappedPairKeys(Message):
    """The keys of one pair in a release, wrapped to the runtime's key."""

    user_id: str
    model_id: str
    model_key_version: int
    request_key_version: int
    wrapped_keys: Annotated[
        _B64,
        Rule(
            description="HPKE(runtime key, model key || request key || runtime session key), "
            "info as in docs/keyservice.md."
        ),
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseOut(Message):
    """A release, signed by the KeyService's attested key over every other field."""

    keyservice_id: str
    runtime_key_id: str
    nonce: _B64
    measurement: str
    revocation_epoch: int
    issued_at: float
    ttl_s: float
    expires_at: float
    revocation_check_s: Annotated[
        float,
        Rule(
            description="How long the runtime may use these keys without a revocation poll "
            "confirming that no revocation touched them."
        ),
    ]
    keys: tuple[WrappedPairKeys, ...]
    signature: Annotated[
        _B64, Rule(description="Ed25519 signature by the KeyService's attested key.")
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RevocationPollIn(_Request):
    """``POST /v1/revocations``: a runtime asks what access changed since an epoch.  The poll
    is sealed under the runtime's session key (delivered in its releases)."""

    runtime_key_id: _KeyId
    poll: Annotated[
        _B64, Rule(description="seal(session key, {since, nonce}), context in keyservice.md.")
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RevocationPollOut(Message):
    """The changes since the epoch asked about, sealed under the runtime's session key."""

    answer: Annotated[
        _B64,
        Rule(
            description="seal(session key, {nonce, epoch, changes, complete}), context in "
            "keyservice.md."
        ),
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaIn(_Request):
    """``POST /v1/replicas``: a joining KeyService's evidence for a challenge, and its fresh
    HPKE key (which the evidence binds, see ``wire.replica_binding``)."""

    nonce: _B64
    evidence: _B64
    replica_public_key: Annotated[
        _B64, Rule(description="The joining KeyService's fresh HPKE public key.")
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaOut(Message):
    """The master key, wrapped to a joining replica that attested with this KeyService's own
    measurement; signed by the KeyService's attested key over every other field."""

    keyservice_id: str
    replica_key_id: str
    nonce: str
    measurement: str
    issued_at: float
    wrapped_master_key: Annotated[
        str, Rule(description="HPKE(replica key, master key), info wire.replica_info.")
    ]
    signature: Annotated[
        str, Rule(description="Ed25519 signature by the KeyService's attested key.")
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ErrorOut(Message):
    """Every error answer of the KeyService: one message (the fixed one for a denial)."""

    error: str
