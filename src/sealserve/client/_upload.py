"""The owner's upload: seal a model straight into the model store, then hand its key over.

::

    with Owner(identity, keyservice_url=url, pin=pin) as owner:
        receipt = upload_model(owner, ModelStore(store_dir), "mobilenet", "mobilenet.onnx")

``store`` is any :class:`ModelSink`: the platform's model store
(:class:`sealserve.instance.ModelStore`) is one.

The model is sealed chunk by chunk (bounded memory whatever its size) under a fresh model key
(or the one given) straight into the store, which commits it atomically; only then is the key
put in the KeyService, HPKE-wrapped to its attested key.  Uploading a model that has a key
already rotates it: the next key version, and the new sealed model replaces the old one.  The
sealed file is bound to that version (inside its authenticated stream), so even when the key
is reused (``key=``) the store cannot serve the previous file as the new version: the runtime
unseals only the version the KeyService says is current.

The file is checked to be an ONNX model (:func:`check_onnx_model`) before anything is sealed
or sent: a wrong file is refused with a ``ValueError`` that names it.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol, Self, cast, runtime_checkable

from sealserve.client._principals import Owner
from sealserve.crypto import SymmetricKey, seal_model
from sealserve.errors import NotFound

__all__ = ["ModelSink", "UploadReceipt", "check_onnx_model", "upload_model"]


class StoredModel(Protocol):
    """What a store says about a sealed model it committed."""

    @property
    def size(self) -> int: ...

    @property
    def digest(self) -> str: ...


class SealedModelSink(Protocol):
    """A sealed model being written: a raw binary stream that commits on leaving ``with``."""

    @property
    def manifest(self) -> StoredModel | None: ...

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: object, /, *rest: object) -> None: ...


@runtime_checkable
class ModelSink(Protocol):
    """Where an owner seals models into: :class:`sealserve.instance.ModelStore` is one."""

    def create(self, model_id: str, /, *, key_version: int) -> SealedModelSink:
        """A writer for version ``key_version`` of ``model_id``'s sealed model."""
        ...


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


def check_onnx_model(source: str | os.PathLike[str] | BinaryIO) -> None:
    """Raise ``ValueError`` ("X is not an ONNX model: why") unless ``source`` holds an ONNX
    model that onnx's checker accepts.

    A path is checked by onnx's C++ checker straight from the file, so Python holds no copy of
    the model (pass a path for large models); a binary file is read from its current position
    (it must be seekable) and rewound there.
    """
    import onnx

    if isinstance(source, str | os.PathLike):
        what = f"'{os.fspath(source)}'"
        if not Path(source).is_file():
            raise ValueError(f"{what} is not an ONNX model: no such file")
        model: str | bytes = os.fspath(source)
    else:
        what = f"'{getattr(source, 'name', type(source).__name__)}'"
        if not source.seekable():
            raise ValueError(f"source {what} must be a path or a seekable binary file")
        start = source.tell()
        model = source.read()
        source.seek(start, io.SEEK_SET)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{what} is not an ONNX model: {reason}") from None


def upload_model(
    owner: Owner,
    store: ModelSink,
    name: str,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    key: SymmetricKey | None = None,
    progress: Callable[[int], None] | None = None,
) -> UploadReceipt:
    """Seal ``source`` (an ``.onnx`` path or a seekable binary file) as model ``name`` of
    ``owner`` into ``store`` and put its key in the KeyService (see the module docstring).

    Raises ``ValueError`` naming ``source`` if it is not an ONNX model (nothing is sealed).

    ``progress`` is called with the plaintext bytes sealed so far.  The key version is 1 for a
    new model, else the current one plus 1.
    """
    if not isinstance(owner, Owner):
        raise TypeError(f"owner must be an Owner, got {type(owner).__name__}")
    if not isinstance(store, ModelSink):
        raise TypeError(f"store must be a ModelSink (a ModelStore), got {type(store).__name__}")
    check_onnx_model(source)
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
    store: ModelSink,
    model_id: str,
    version: int,
    key: SymmetricKey,
    src: BinaryIO,
    progress: Callable[[int], None] | None,
) -> tuple[int, StoredModel]:
    sealed_so_far = [0]

    def on_chunk(done: int) -> None:
        sealed_so_far[0] = done
        if progress is not None:
            progress(done)

    with store.create(model_id, key_version=version) as out:
        # The writer is a raw binary stream (write, writable), as seal_model needs.
        seal_model(
            key, src, cast(BinaryIO, out), model_id=model_id, version=version, progress=on_chunk
        )
    manifest = out.manifest
    assert manifest is not None  # committed on leaving the block
    return sealed_so_far[0], manifest
