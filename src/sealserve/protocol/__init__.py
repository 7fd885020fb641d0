"""The wire that clients and servers share: everything the client SDK needs, and no more.

* ids: :func:`join_model_id` / :func:`split_model_id` (``<owner_id>/<name>``),
  :func:`check_principal_id`, :func:`new_request_id` / :func:`check_request_id`;
* the envelopes of an inference: :func:`seal_input` / :func:`unseal_output` and the contexts
  both sides bind (:func:`input_context`, :func:`output_context`);
* sealed model files: :class:`SealedModelHeader` (format, chunk size and the model version the
  file is bound to), which the store checks and the runtime reads before unsealing;
* the input limits an owner declares inside a model (:class:`InputLimits`: largest batch and
  dynamic dimensions, read by the runtime before it runs a request);
* the tensor format inside them: :func:`encode_tensors` / :func:`decode_tensors` (no pickle);
* HTTP: the header names and Server-Timing of :mod:`headers`, :class:`RouteInfo`, and the
  error body with its mapping to exceptions both ways (:class:`HostError`,
  :func:`error_for_exception`, :func:`raise_for_error`, :func:`exception_for_answer`);
* uploads: the model upload API's bodies and paths, the owner's signed headers
  (:func:`owner_headers`) and the server's check of them (:class:`OwnerRequests`);
* the KeyService's audit log: its hash chain and signed checkpoints, and
  :func:`verify_audit`, which an owner runs on what it fetched;
* the KeyService: its typed request and answer bodies (:class:`ReleaseIn`,
  :class:`ModelKeyReceipt`, ...), the encodings and ``info`` strings of :mod:`wire`, checking
  its attestation (:func:`verify_keyservice`) and the runtime's side of a key release
  (:class:`ReleaseSession`).

It imports ``crypto`` and ``attest`` only (no web server, database or onnxruntime).
"""

from sealserve.crypto import SEALED_MODEL_HEADER_SIZE, SealedModelHeader
from sealserve.protocol import _audit as audit
from sealserve.protocol import _headers as headers
from sealserve.protocol import _wire as wire
from sealserve.protocol._attested import (
    AttestedKeyService,
    attestation_nonce,
    default_keyservice_pin,
    verify_keyservice,
)
from sealserve.protocol._audit import (
    AuditCheckpoint,
    AuditPage,
    AuditPoint,
    AuditRecord,
    AuditVerification,
    verify_audit,
)
from sealserve.protocol._envelopes import (
    INPUT_PURPOSE,
    OUTPUT_PURPOSE,
    input_context,
    output_context,
    seal_input,
    unseal_output,
)
from sealserve.protocol._errors import (
    HostError,
    bad_request,
    error_body,
    error_for_exception,
    exception_for_answer,
    raise_for_error,
)
from sealserve.protocol._headers import RouteInfo
from sealserve.protocol._ids import (
    MODEL_NAME_PATTERN,
    PRINCIPAL_ID_PATTERN,
    check_principal_id,
    check_request_id,
    join_model_id,
    new_request_id,
    split_model_id,
)
from sealserve.protocol._limits import InputLimits
from sealserve.protocol._messages import (
    AccessChange,
    AttestationOut,
    ChallengeOut,
    ErrorOut,
    GrantIn,
    ModelInfo,
    ModelKeyIn,
    ModelKeyReceipt,
    PrincipalIn,
    PrincipalOut,
    ReleaseIn,
    ReleaseOut,
    ReleasePair,
    ReplicaIn,
    ReplicaOut,
    RequestKeyIn,
    RequestKeyReceipt,
    RevocationPollIn,
    RevocationPollOut,
    WrappedPairKeys,
)
from sealserve.protocol._release import (
    Release,
    ReleasedKeys,
    ReleaseSession,
    RevocationAnswer,
    RevocationPoll,
    parse_challenge,
)
from sealserve.protocol._schema import Message
from sealserve.protocol._tensors import (
    TensorLimits,
    decode_tensors,
    encode_tensors,
    encode_tensors_into,
    encoded_size,
)
from sealserve.protocol._uploads import (
    UPLOADS_PATH,
    ModelDeleted,
    OwnerRequests,
    StoredModel,
    UploadIn,
    UploadOut,
    chunk_path,
    commit_path,
    model_path,
    owner_headers,
    upload_path,
)

__all__ = [
    "AccessChange",
    "AttestationOut",
    "AttestedKeyService",
    "AuditCheckpoint",
    "AuditPage",
    "AuditPoint",
    "AuditRecord",
    "AuditVerification",
    "ChallengeOut",
    "ErrorOut",
    "GrantIn",
    "HostError",
    "INPUT_PURPOSE",
    "InputLimits",
    "MODEL_NAME_PATTERN",
    "Message",
    "ModelDeleted",
    "ModelInfo",
    "ModelKeyIn",
    "ModelKeyReceipt",
    "OUTPUT_PURPOSE",
    "OwnerRequests",
    "PRINCIPAL_ID_PATTERN",
    "PrincipalIn",
    "PrincipalOut",
    "Release",
    "ReleaseIn",
    "ReleaseOut",
    "ReleasePair",
    "ReleaseSession",
    "ReleasedKeys",
    "ReplicaIn",
    "ReplicaOut",
    "RequestKeyIn",
    "RequestKeyReceipt",
    "RevocationAnswer",
    "RevocationPoll",
    "RevocationPollIn",
    "RevocationPollOut",
    "RouteInfo",
    "SEALED_MODEL_HEADER_SIZE",
    "SealedModelHeader",
    "StoredModel",
    "TensorLimits",
    "UPLOADS_PATH",
    "UploadIn",
    "UploadOut",
    "WrappedPairKeys",
    "attestation_nonce",
    "audit",
    "bad_request",
    "check_principal_id",
    "check_request_id",
    "chunk_path",
    "commit_path",
    "decode_tensors",
    "default_keyservice_pin",
    "encode_tensors",
    "encode_tensors_into",
    "encoded_size",
    "error_body",
    "error_for_exception",
    "exception_for_answer",
    "headers",
    "input_context",
    "join_model_id",
    "model_path",
    "new_request_id",
    "output_context",
    "owner_headers",
    "parse_challenge",
    "raise_for_error",
    "seal_input",
    "split_model_id",
    "unseal_output",
    "upload_path",
    "verify_audit",
    "verify_keyservice",
    "wire",
]
