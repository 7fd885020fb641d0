"""Model owners and users, as the KeyService sees them.

An :class:`Owner` puts model keys, rotates them, grants users access under a runtime policy and
revokes grants; a :class:`User` registers request keys for (model, runtime policy).  Both open
an attested connection to the KeyService (:class:`KeyServiceClient`) and HPKE-wrap every key
they upload to the KeyService's attested public key, with an ``info`` that binds what the key
is and for whom::

    with Owner(identity, keyservice_url=url, pin=pin) as owner:
        owner.register()
        key = SymmetricKey.generate()
        owner.put_model_key("resnet50", key)
        owner.grant("resnet50", user_id, policy)

    with User(identity, keyservice_url=url, pin=pin, gateway_url=gw, runtime=policy) as user:
        result = user.infer("<owner_id>/resnet50", {"input": batch})
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import httpx
import numpy.typing as npt

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._resource import Resource
from sealserve.attest import Policy
from sealserve.client._gateway import GatewayClient, Inference
from sealserve.client._keyservice import KeyServiceClient, KeyServicePin
from sealserve.crypto import Identity, RequestKey, SymmetricKey, wrap
from sealserve.errors import KeyServiceError
from sealserve.protocol import (
    AccessChange,
    AuditPage,
    AuditPoint,
    AuditVerification,
    GrantIn,
    ModelInfo,
    ModelKeyIn,
    ModelKeyReceipt,
    PrincipalIn,
    PrincipalOut,
    RequestKeyIn,
    RequestKeyReceipt,
    join_model_id,
    split_model_id,
    verify_audit,
    wire,
)

__all__ = ["Owner", "User"]

#: Most pages one :meth:`_Principal.audit` fetches (of up to 1,000 entries each).
_MAX_AUDIT_PAGES = 10_000


class _Principal(Resource):
    role = ""

    def __init__(
        self,
        identity: Identity,
        *,
        keyservice_url: str,
        pin: KeyServicePin,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.identity = identity
        self._client = KeyServiceClient(
            keyservice_url,
            identity=identity,
            pin=pin,
            clock=clock,
            timeout_s=timeout_s,
            transport=transport,
            ca_bundle=ca_bundle,
        )

    @property
    def principal_id(self) -> str:
        """This principal's id: hex SHA-256 of its identity's Ed25519 public key."""
        return self.identity.principal_id

    @property
    def keyservice(self) -> KeyServiceClient:
        """The attested connection to the KeyService this principal talks through."""
        return self._client

    def _open(self) -> None:
        self._client.open()

    def _close(self) -> None:
        self._client.close()

    def register(self) -> bool:
        """Register this identity with its role; ``False`` if it already was."""
        body = PrincipalIn(
            public_key=self.identity.public_key_bytes,
            role=self.role,  # type: ignore[arg-type]
        )
        doc = self._client.request(
            "POST", f"{wire.API_PREFIX}/principals", body, answer=PrincipalOut
        )
        return doc.created

    def audit(
        self,
        *,
        since: AuditPoint | None = None,
        through: AuditPoint | None = None,
        page: int = 1000,
    ) -> AuditVerification:
        """Fetch the KeyService's audit log after ``since`` (a checkpoint verified before; the
        start by default) and verify it: the entries chain to a checkpoint the attested
        KeyService signed, and that checkpoint does not end before ``since``.

        Returns this principal's entries and the new checkpoint (keep it, and pass it as
        ``since`` next time: a history rewritten or cut back before it is then detected;
        ``through`` checks, verifying from the start, that the chain still passes through it).
        :class:`~sealserve.errors.AuditLogTampered` says what does not verify.
        """
        start = since if since is not None else AuditPoint.start()
        pages: list[AuditPage] = []
        after = start.seq
        for _ in range(_MAX_AUDIT_PAGES):  # bounded: a page always moves ``after`` forward
            got = self._client.request(
                "GET", f"{wire.API_PREFIX}/audit?after={after}&limit={page}", answer=AuditPage
            )
            pages.append(got)
            if not got.records or got.records[-1].seq >= got.checkpoint.seq:
                break
            after = got.records[-1].seq
        else:
            raise KeyServiceError(
                f"the audit log has more than {_MAX_AUDIT_PAGES} pages after entry {start.seq}; "
                "verify it in steps (pass a later checkpoint as since)"
            )
        attested = self._client.keyservice
        return verify_audit(
            pages,
            start=start,
            keyservice_id=attested.keyservice_id,
            signing_public_key=attested.signing_public_key,
            through=through,
        )

    def _wrap(self, kind: str, model_id: str, version: int | None, secret: bytes) -> bytes:
        attested = self._client.keyservice
        info = wire.upload_info(
            kind,
            model_id=model_id,
            principal_id=self.principal_id,
            version=version,
            keyservice_key=attested.hpke_public_key,
        )
        return wrap(attested.hpke_public_key, secret, info=info, suite=attested.hpke_suite)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.principal_id[:16]}..., {self._client.url!r})"


class Owner(_Principal):
    """A model owner: model keys, grants and revocations.  Use inside ``with``."""

    role = "owner"
    resource_name = "the owner"

    def model_id(self, name: str) -> str:
        """``<owner_id>/<name>``: how the model is named everywhere."""
        return join_model_id(self.principal_id, name)

    def _path(self, name: str) -> str:
        return f"{wire.API_PREFIX}/models/{self.model_id(name)}"

    def put_model_key(self, name: str, key: SymmetricKey, *, version: int = 1) -> ModelKeyReceipt:
        """Store ``key`` as version ``version`` of model ``name`` (1 creates the model)."""
        if not isinstance(key, SymmetricKey):
            raise TypeError(f"key must be a SymmetricKey, got {type(key).__name__}")
        wrapped = self._wrap("model-key", self.model_id(name), version, key.to_bytes())
        body = ModelKeyIn(version=version, wrapped_key=wrapped)
        return self._client.request("PUT", self._path(name) + "/key", body, answer=ModelKeyReceipt)

    def rotate_model_key(self, name: str, key: SymmetricKey) -> ModelKeyReceipt:
        """Replace the key of model ``name`` by ``key`` (the next version).  Runtimes get the
        new key from their next release; re-seal and upload the model first."""
        current = self.model(name).key_version
        return self.put_model_key(name, key, version=current + 1)

    def model(self, name: str) -> ModelInfo:
        """Model ``name``'s current key version and the users granted access to it."""
        return self._client.request("GET", self._path(name), answer=ModelInfo)

    def grant(self, name: str, user_id: str, policy: Policy) -> int:
        """Let ``user_id`` use model ``name`` in runtimes that satisfy ``policy``; returns
        the revocation epoch."""
        doc = self._client.request(
            "PUT",
            f"{self._path(name)}/grants/{user_id}",
            GrantIn(policy=policy.to_dict()),
            answer=AccessChange,
        )
        return doc.revocation_epoch

    def revoke(self, name: str, user_id: str) -> int:
        """Withdraw the grant; no release after this returns includes it.  Returns the new
        revocation epoch (runtimes drop keys of older epochs when they see it)."""
        doc = self._client.request(
            "DELETE", f"{self._path(name)}/grants/{user_id}", answer=AccessChange
        )
        return doc.revocation_epoch


class User(_Principal):
    """A user (data owner): request keys for (model, runtime policy), and inferences on the
    user's sealed data.  Use inside ``with``.

    ``gateway_url`` is where :meth:`infer` sends (its ``https://`` certificate must chain to
    ``ca_bundle`` too); ``runtime`` is the policy a runtime must satisfy to get the request
    key :meth:`infer` creates and registers on a model's first use (with
    :meth:`put_request_key` first, a key of your own is used instead).
    """

    role = "user"
    resource_name = "the user"

    def __init__(
        self,
        identity: Identity,
        *,
        keyservice_url: str,
        pin: KeyServicePin,
        gateway_url: str | None = None,
        runtime: Policy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        gateway_transport: httpx.BaseTransport | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        if runtime is not None and not isinstance(runtime, Policy):
            raise TypeError(f"runtime must be a Policy, got {type(runtime).__name__}")
        super().__init__(
            identity,
            keyservice_url=keyservice_url,
            pin=pin,
            clock=clock,
            timeout_s=timeout_s,
            transport=transport,
            ca_bundle=ca_bundle,
        )
        self.runtime = runtime
        self._gateway: GatewayClient | None = None
        if gateway_url is not None:
            self._gateway = GatewayClient(
                gateway_url, transport=gateway_transport, clock=clock, ca_bundle=ca_bundle
            )
        self._keys: dict[str, RequestKey] = {}
        self._keys_lock = threading.Lock()

    @property
    def gateway(self) -> GatewayClient:
        """The gateway client :meth:`infer` sends through (``gateway_url`` is required)."""
        if self._gateway is None:
            raise ValueError("this User has no gateway: pass gateway_url= to infer")
        return self._gateway

    def _open(self) -> None:
        super()._open()
        if self._gateway is not None:
            try:
                self._gateway.open()
            except BaseException:
                super()._close()
                raise

    def _close(self) -> None:
        try:
            if self._gateway is not None:
                self._gateway.close()
        finally:
            super()._close()

    def request_key(self, model_id: str) -> RequestKey:
        """The request key :meth:`infer` uses for ``model_id``: the one given to
        :meth:`put_request_key` (by this object), else a new one registered now under
        ``runtime``."""
        with self._keys_lock:
            key = self._keys.get(model_id)
            if key is not None:
                return key
            if self.runtime is None:
                raise ValueError(
                    f"no request key for {model_id!r}: pass runtime= (the policy a runtime "
                    "must satisfy) to create one, or call put_request_key first"
                )
            key = RequestKey.generate()
            self.put_request_key(model_id, key, self.runtime)
            return key

    def infer(
        self,
        model_id: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
        retries: int = 0,
    ) -> Inference:
        """Run model ``model_id`` (``<owner_id>/<name>``) on ``inputs``, sealed end to end:
        sealed here under this user's request key for the model (see :meth:`request_key`),
        unsealed here; only a runtime the KeyService released the key to sees them.

        A retryable failure is sent again (sealed afresh) at most ``retries`` times.
        """
        gateway = self.gateway
        key = self.request_key(model_id)
        return gateway.infer(
            model_id,
            inputs,
            user_id=self.principal_id,
            key=key,
            request_id=request_id,
            timeout_s=timeout_s,
            retries=retries,
        )

    def _path(self, model_id: str) -> str:
        split_model_id(model_id)
        return f"{wire.API_PREFIX}/models/{model_id}/request-keys/{self.principal_id}"

    def put_request_key(self, model_id: str, key: RequestKey, policy: Policy) -> RequestKeyReceipt:
        """Give the KeyService ``key`` for ``model_id``, releasable only to runtimes that
        satisfy ``policy`` (and the owner's grant).  Replaces an earlier one."""
        if not isinstance(key, RequestKey):
            raise TypeError(f"key must be a RequestKey, got {type(key).__name__}")
        wrapped = self._wrap("request-key", model_id, None, key.to_bytes())
        body = RequestKeyIn(wrapped_key=wrapped, policy=policy.to_dict())
        receipt = self._client.request("PUT", self._path(model_id), body, answer=RequestKeyReceipt)
        self._keys[model_id] = key  # what infer seals with from now on
        return receipt

    def delete_request_key(self, model_id: str) -> int:
        """Withdraw the request key for ``model_id``; returns the new revocation epoch."""
        doc = self._client.request("DELETE", self._path(model_id), answer=AccessChange)
        self._keys.pop(model_id, None)
        return doc.revocation_epoch
