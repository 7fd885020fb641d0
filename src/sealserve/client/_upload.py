"""The owner's upload: seal a model straight into the model store, then hand its key over.

::

    with Owner(identity, keyservice_url=url, pin=pin) as owner:
        receipt = upload_model(owner, ModelStore(store_dir), "mobilenet", "mobilenet.onnx")

The model is sealed chunk by chunk (bounded memory whatever its size) under a fresh model key
(or the one given) straight into the store, which commits it atomically; only then is the key
put in the KeyService, HPKE-wrapped to its attested key.  Uploading a model that has a key
already rotates it: the next key version, and the new sealed model replaces the old one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from sealserve.client._principals import Owner
from sealserve.crypto import SymmetricKey, seal_model
from sealserve.errors import NotFound
from sealserve.instance import ModelManifest, ModelStore

__all__ = ["UploadReceipt", "upload_model"]


@dataclasses.dataclass(frozen=True, slots=True)
class UploadReceipt:
    """What an upload did (nothing secret: the key is only named by its fingerprint)."""

    model_id: str
    key_version: int
    revocation_epoch: int
    #: Bytes of the model in the clear (what was sealed) and of the sealed blob stored.
    plain_bytes: int
    sealed_bytes: int
    digest: str
    key_fingerprint: str


def upload_model(
    owner: Owner,
    store: ModelStore,
    name: str,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    key: SymmetricKey | None = None,
    progress: Callable[[int], None] | None = None,
) -> UploadReceipt:
    """Seal ``source`` (an ``.onnx`` path or a binary file) as model ``name`` of ``owner``
    into ``store`` and put its key in the KeyService (see the module docstring).

    ``progress`` is called with the plaintext bytes sealed so far.  The key version is 1 for a
    new model, else the current one plus 1.
    """
    if not isinstance(owner, Owner):
        raise TypeError(f"owner must be an Owner, got {type(owner).__name__}")
    if not isinstance(store, ModelStore):
        raise TypeError(f"store must be a ModelStore, got {type(store).__name__}")
    model_id = owner.model_id(name)
    try:
        version = owner.model(name).key_version + 1
    except NotFound:
        version = 1
    model_key = key if key is not None else SymmetricKey.generate()
    if isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as src:
            plain, manifest = _seal_into(store, model_id, version, model_key, src, progress)
    else:
        plain, manifest = _seal_into(store, model_id, version, model_key, source, progress)
    receipt = owner.put_model_key(name, model_key, version=version)
    return UploadReceipt(
        model_id=model_id,
        key_version=receipt.version,
        revocation_epoch=receipt.revocation_epoch,
        plain_bytes=plain,
        sealed_bytes=manifest.size,
        digest=manifest.digest,
        key_fingerprint=model_key.fingerprint,
    )


def _seal_into(
    store: ModelStore,
    model_id: str,
    version: int,
    key: SymmetricKey,
    src: BinaryIO,
    progress: Callable[[int], None] | None,
) -> tuple[int, ModelManifest]:
    sealed_so_far = [0]

    def on_chunk(done: int) -> None:
        sealed_so_far[0] = done
        if progress is not None:
            progress(done)

    with store.create(model_id, key_version=version) as out:
        # The writer is a raw binary stream (write, writable), as seal_model needs.
        seal_model(key, src, cast(BinaryIO, out), model_id=model_id, progress=on_chunk)
    manifest = out.manifest
    assert manifest is not None  # committed on leaving the block
    return sealed_so_far[0], manifest
