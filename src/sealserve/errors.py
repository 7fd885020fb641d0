"""The one exception tree of sealserve.

Every error sealserve raises on purpose derives from :class:`SealserveError`, with one subtree
per layer.  Mistakes by the caller (a wrong type, a bad argument value) are plain
``TypeError`` / ``ValueError`` and are not part of this tree; nor is using a resource out of
its lifecycle (opening it twice, using it unopened or closed), a
:class:`sealserve.ResourceStateError` (a ``RuntimeError``, as httpx and trio raise).
Foreign errors are translated at each boundary (``raise OurError(...) from exc``).

At the security boundary the messages say nothing more than the fixed text: every failed
unseal is the same :class:`InvalidEnvelope`, every refused key release the same
:class:`AccessDenied`.  The detail goes to the log at DEBUG.

::

    SealserveError
    ├── ConfigError
    ├── CryptoError
    │   ├── InvalidEnvelope          every failed unseal, one fixed message
    │   ├── InvalidSignature         a signed request that does not verify or is replayed
    │   ├── ReplayQuotaExceeded      a principal has too many live signed-request nonces
    │   └── IdentityError            an identity file that is missing, malformed or too open
    ├── AttestationError             every failed verification, one fixed message
    ├── TeeError                     the TEE platform could not launch, reach or signal a process
    ├── KeyServiceError
    │   ├── AccessDenied             the fixed 403 of key release and signed requests
    │   ├── RateLimited              429: too many requests from one principal or address
    │   ├── NotFound                 an unknown principal, model or grant (for its owner)
    │   ├── Conflict                 already registered, already exists
    │   ├── SchemaVersionError       a database written by a newer sealserve
    │   ├── SealedStateError         the data is sealed under another key; refusing to start
    │   ├── KeyServiceChanged        the attested KeyService's long-term keys are not pinned ones
    │   └── AuditLogTampered         the audit log does not verify: rewritten or truncated
    ├── IPCError
    │   ├── SegmentError             bad magic, wrong version, corrupt header, wrong size
    │   ├── ChannelClosed            the channel (or its peer) was closed in an orderly way
    │   ├── PeerDied                 the peer process died; its slots were reclaimed
    │   ├── MessageTooLarge          larger than a slot or the arena
    │   └── BackpressureTimeout      the ring stayed full for the whole timeout
    ├── RuntimeError_                the sealed runtime (SeMIRT)
    │   ├── RuntimeUnavailable       crashed or restarting; retryable
    │   ├── DeadlineExceeded         the request's deadline passed; retryable
    │   ├── ModelNotAvailable        unknown model, failed fetch, or a model that will not load
    │   └── MemoryBudgetExceeded     a model larger than the whole budget
    ├── ModelError                   the model zoo: a shipped model file missing or not as pinned
    │   ├── ExtraNotInstalled        a model needs the ``models`` extra (also an ImportError)
    │   └── TensorFormatError        a tensor container that is malformed or over a limit
    ├── InstanceError                the untrusted instance host
    │   ├── ModelNotStored           the model store holds no such model
    │   └── StoreIntegrityError      a stored blob does not match its digest; not served
    ├── PackerError                  FnPacker routing
    ├── PlatformError                where instances run
    │   └── CapacityExhausted        no instance can take the request now; retryable
    └── GatewayError                 the public inference API
        └── UploadRefused            the store refused a model upload or delete (``code``)
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AttestationError",
    "AuditLogTampered",
    "BackpressureTimeout",
    "CapacityExhausted",
    "ChannelClosed",
    "ConfigError",
    "Conflict",
    "CryptoError",
    "DeadlineExceeded",
    "ExtraNotInstalled",
    "GatewayError",
    "IPCError",
    "IdentityError",
    "InstanceError",
    "InvalidEnvelope",
    "InvalidSignature",
    "KeyServiceChanged",
    "KeyServiceError",
    "MemoryBudgetExceeded",
    "MessageTooLarge",
    "ModelError",
    "ModelNotAvailable",
    "ModelNotStored",
    "NotFound",
    "PackerError",
    "PeerDied",
    "PlatformError",
    "RateLimited",
    "ReplayQuotaExceeded",
    "RuntimeError_",
    "RuntimeUnavailable",
    "SchemaVersionError",
    "SealedStateError",
    "SealserveError",
    "SegmentError",
    "StoreIntegrityError",
    "TeeError",
    "TensorFormatError",
    "UploadRefused",
]


class SealserveError(Exception):
    """Root of every error sealserve raises on purpose.

    ``retryable`` tells a caller whether the same request may succeed if sent again
    (a crashed runtime, a full platform), as opposed to a request that will always fail.
    """

    retryable: bool = False


class ConfigError(SealserveError, ValueError):
    """A setting has a value sealserve cannot use; the message names the key and the value."""


# -- crypto ----------------------------------------------------------------------------------


class CryptoError(SealserveError):
    """Base of the crypto layer."""


class InvalidEnvelope(CryptoError):
    """An envelope or sealed model did not unseal.

    Raised for every cause (wrong key, flipped bit, wrong context, truncation, reordering,
    unknown version) with the same message, so a caller learns nothing from which one.
    """

    MESSAGE = "invalid envelope"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class InvalidSignature(CryptoError):
    """A signed request did not verify, is outside the replay window, or was replayed."""

    MESSAGE = "invalid or replayed signature"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class ReplayQuotaExceeded(CryptoError):
    """A principal already has as many signed requests in the replay window as a verifier
    remembers for one principal; retry when some expire.  Only that principal is refused."""

    retryable = True


class IdentityError(CryptoError):
    """An identity file is missing, malformed, or readable by others."""


# -- attest ----------------------------------------------------------------------------------


class AttestationError(SealserveError):
    """Evidence did not satisfy the policy.  One fixed message; the reason is logged."""

    MESSAGE = "attestation failed"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class TeeError(SealserveError):
    """The TEE platform (simulated or real) could not launch, reach or signal a measured process,
    or a process asked for evidence outside a measured launch."""


# -- keyservice ------------------------------------------------------------------------------


class KeyServiceError(SealserveError):
    """Base of the KeyService and its client."""


class AccessDenied(KeyServiceError):
    """The fixed denial: no key is released and nothing says why."""

    MESSAGE = "access denied"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class RateLimited(KeyServiceError):
    """429: too many requests from one principal (or, unsigned, one client address); retry
    later.  Challenges are stateless, so there is no limit on outstanding ones: issuing them
    counts against the request rate like any request (docs/keyservice.md, section 7)."""

    retryable = True


class NotFound(KeyServiceError):
    """An unknown principal, model or grant, reported only to whom may know it exists."""


class Conflict(KeyServiceError):
    """The thing already exists (a principal registered twice, a model key put twice)."""


class SchemaVersionError(KeyServiceError):
    """The database was written by a newer sealserve than this one."""


class SealedStateError(KeyServiceError):
    """The KeyService's data is sealed under a key this KeyService cannot derive (another
    build, platform or debug launch): it refuses to start rather than replace the key."""


class KeyServiceChanged(KeyServiceError):
    """The KeyService attested, but its long-term keys are not the ones pinned for it (on
    first use or configured): treat it as an attack until the operator explains the change."""


class AuditLogTampered(KeyServiceError):
    """The KeyService's audit log does not verify: an entry was altered, removed or inserted,
    the history was truncated, or a checkpoint is not the attested KeyService's.  The
    message says which; the database (which is not trusted) was tampered with."""


# -- ipc -------------------------------------------------------------------------------------


class IPCError(SealserveError):
    """Base of the shared-memory data plane."""


class SegmentError(IPCError):
    """A segment has a bad magic, another version, a corrupt header or the wrong size."""


class ChannelClosed(IPCError):
    """The channel, or its peer, was closed."""


class PeerDied(IPCError):
    """The peer process died; the slots it held were reclaimed."""

    retryable = True


class MessageTooLarge(IPCError, ValueError):
    """A message is larger than the channel can ever carry."""


class BackpressureTimeout(IPCError, TimeoutError):
    """The ring stayed full for the whole timeout of a send or a loan."""

    retryable = True


# -- runtime ---------------------------------------------------------------------------------


class RuntimeError_(SealserveError):  # trailing underscore: not the builtin
    """Base of the sealed runtime (SeMIRT)."""


class RuntimeUnavailable(RuntimeError_):
    """The runtime crashed or is restarting; the request was not served and may be retried."""

    retryable = True


class DeadlineExceeded(RuntimeError_, TimeoutError):
    """The request's deadline passed before it was served."""

    retryable = True


class ModelNotAvailable(RuntimeError_):
    """The model is unknown, could not be fetched, or does not load."""


class MemoryBudgetExceeded(RuntimeError_):
    """A model is larger than the runtime's whole memory budget."""


# -- models ----------------------------------------------------------------------------------


class ModelError(SealserveError):
    """Base of the model zoo: a shipped model file that is missing or not the pinned one."""


class ExtraNotInstalled(ModelError, ImportError):
    """A model or a helper needs an optional extra; the message names it and how to install it."""


class TensorFormatError(ModelError, ValueError):
    """A tensor container is malformed, not canonical, or over one of its limits."""


# -- instance, packer, platform, gateway ------------------------------------------------------


class InstanceError(SealserveError):
    """The untrusted instance host failed to serve a request."""


class ModelNotStored(InstanceError, LookupError):
    """The model store has no model of that id."""


class StoreIntegrityError(InstanceError):
    """A blob of the model store does not match the digest its manifest records (a damaged or
    tampered file); it is not served."""


class PackerError(SealserveError):
    """FnPacker could not route a request."""


class PlatformError(SealserveError):
    """The platform could not start, reach or stop an instance."""


class CapacityExhausted(PlatformError):
    """Every instance is busy and no more may start; retry after a while."""

    retryable = True


class GatewayError(SealserveError):
    """The public inference API refused or failed a request."""


class UploadRefused(GatewayError):
    """The gateway's store refused a model upload or delete; ``code`` is its error code
    (``digest_mismatch``, ``upload_offset_mismatch``, ``stale_key_version``...,
    docs/http-api.md), the message says what to do."""

    def __init__(self, message: str, *, code: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
