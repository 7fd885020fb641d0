"""The owner's upload: seal a model, store it, then hand its key over.

::

    with Owner(identity, keyservice_url=url, pin=pin) as owner, StoreClient(
        gateway_url, identity=identity
    ) as store:
        receipt = upload_model(owner, store, "mobilenet", "mobilenet.onnx")

``store`` is the gateway's upload API (:class:`StoreClient`: the model is sealed into a
private spool file, then sent in signed chunks, resumably, and committed once its digest
checks), or any :class:`ModelSink` the owner can write into directly (the platform's
:class:`sealserve.instance.ModelStore`: sealed straight into it).

The model is sealed chunk by chunk (bounded memory whatever its size) under a fresh model key
(or the one given); the store commits it atomically; only then is the key put in the
KeyService, HPKE-wrapped to its attested key.  Uploading a model that has a key already
rotates it: the next key version, and the new sealed model replaces the old one.  The sealed
file is bound to that version (inside its authenticated stream), so even when the key is
reused (``key=``) the store cannot serve the previous file as the new version: the runtime
unseals only the version the KeyService says is current.

The file is checked to be an ONNX model (:func:`check_onnx_model`) before anything is sealed
or sent: a wrong file is refused with a ``ValueError`` that names it.

``max_batch=`` and ``max_dims=`` declare the model's input limits
(:class:`~sealserve.protocol.InputLimits`) inside it before it is sealed
(:func:`declare_input_limits`), so the seal authenticates them and the runtime refuses a
request over them before running it; a declaration that does not fit the model's inputs is
refused with a ``ValueError`` that says why, before anything is sealed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol, Self, cast, runtime_checkable

from sealserve.client._principals import Owner
from sealserve.client._store import StoreClient
from sealserve.crypto import SymmetricKey, seal_model
from sealserve.errors import NotFound
from sealserve.protocol import InputLimits

__all__ = [
    "ModelSink",
    "SealedUpload",
    "UploadReceipt",
    "check_onnx_model",
    "declare_input_limits",
    "seal_for_upload",
    "send_sealed",
    "upload_model",
]


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


def declare_input_limits(
    model: bytes,
    *,
    max_batch: int | None = None,
    max_dims: Mapping[str, Sequence[int | None]] | None = None,
) -> bytes:
    """``model`` (ONNX bytes) with its input limits declared in its ``metadata_props``: the
    largest batch (first dimension of the inputs whose first dimension is dynamic) and the
    largest value per dynamic dimension (``{input: [max or None per dimension]}``).  Replaces
    an earlier declaration; ``ValueError`` saying why if the limits do not fit its inputs."""
    import onnx

    try:
        proto = onnx.load_from_string(model)
    except Exception as exc:  # onnx's decode errors have no common base
        raise ValueError(f"not an ONNX model: {type(exc).__name__}") from None
    limits = InputLimits(
        _onnx_input_shapes(proto),
        max_batch=max_batch,
        max_dims={k: tuple(v) for k, v in (max_dims or {}).items()},
    )
    props = {p.key: p.value for p in proto.metadata_props if not p.key.startswith("sealserve.max_")}
    props.update(limits.metadata())
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    return bytes(proto.SerializeToString())


def _onnx_input_shapes(proto: Any) -> dict[str, tuple[int | None, ...] | None]:
    """The graph's inputs that are not initializers, as :class:`InputLimits` takes them."""
    initializers = {init.name for init in proto.graph.initializer}
    shapes: dict[str, tuple[int | None, ...] | None] = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            shapes[value.name] = None
            continue
        shapes[value.name] = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 1 else None
            for d in tensor.shape.dim
        )
    return shapes


def upload_model(
    owner: Owner,
    store: StoreClient | ModelSink,
    name: str,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    key: SymmetricKey | None = None,
    progress: Callable[[int], None] | None = None,
    upload_progress: Callable[[int, int], None] | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    max_batch: int | None = None,
    max_dims: Mapping[str, Sequence[int | None]] | None = None,
) -> UploadReceipt:
    """Seal ``source`` (an ``.onnx`` path or a seekable binary file) as model ``name`` of
    ``owner`` into ``store`` and put its key in the KeyService (see the module docstring).

    Raises ``ValueError`` naming ``source`` if it is not an ONNX model (nothing is sealed).

    ``progress`` is called with the plaintext bytes sealed so far, ``upload_progress`` (a
    :class:`StoreClient` only) with the sealed bytes the gateway holds and the sealed size;
    ``spool_dir`` is where
    the sealed model waits for its upload (default: the system's temporary directory; it
    holds ciphertext only and is removed).  The key version is 1 for a new model, else the
    current one plus 1.  ``max_batch`` and ``max_dims`` are declared inside the model before
    it is sealed (:func:`declare_input_limits`; the model is then read into memory).
    """
    if not isinstance(owner, Owner):
        raise TypeError(f"owner must be an Owner, got {type(owner).__name__}")
    if not isinstance(store, StoreClient | ModelSink):
        raise TypeError(
            f"store must be a StoreClient or a ModelSink (a ModelStore), got {type(store).__name__}"
        )
    check_onnx_model(source)
    if max_batch is not None or max_dims:
        if isinstance(source, str | os.PathLike):
            clear = Path(source).read_bytes()
        else:
            start = source.tell()
            clear = source.read()
            source.seek(start, io.SEEK_SET)
        source = io.BytesIO(declare_input_limits(clear, max_batch=max_batch, max_dims=max_dims))
        del clear
    model_id = owner.model_id(name)
    try:
        version = owner.model(name).key_version + 1
    except NotFound:
        version = 1
    model_key = key if key is not None else SymmetricKey.generate()

    if isinstance(store, StoreClient):
        with tempfile.TemporaryDirectory(prefix="sealserve-upload-", dir=spool_dir) as folder:
            sealed = _seal_file(
                model_id, name, version, model_key, source, Path(folder) / "sealed", progress
            )
            return send_sealed(owner, store, sealed, key=model_key, progress=upload_progress)
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
        digest=manifest.digest.removeprefix("sha256:"),
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
    """Seal straight into a store the owner writes to (a directory it shares)."""
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


class _Hashing:
    """A raw binary sink that hashes and counts what goes through it into ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.hasher = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self.hasher.update(view)
        self._out.write(view)
        self.size += len(view)
        return len(view)


@dataclasses.dataclass(frozen=True, slots=True)
class SealedUpload:
    """A model sealed for its next key version, waiting in a file to be uploaded (the file
    holds ciphertext only; its key is the caller's)."""

    model_id: str
    name: str
    key_version: int
    path: Path
    size: int
    #: Hex SHA-256 of the sealed file.
    digest: str
    plain_bytes: int

    def to_json(self) -> dict[str, object]:
        """The fields as JSON values (``path`` as a string)."""
        return {**dataclasses.asdict(self), "path": str(self.path)}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> SealedUpload:
        """The upload :meth:`to_json` wrote."""
        return cls(
            model_id=str(doc["model_id"]),
            name=str(doc["name"]),
            key_version=int(str(doc["key_version"])),
            path=Path(str(doc["path"])),
            size=int(str(doc["size"])),
            digest=str(doc["digest"]),
            plain_bytes=int(str(doc["plain_bytes"])),
        )


def seal_for_upload(
    owner: Owner,
    name: str,
    source: str | os.PathLike[str] | BinaryIO,
    dest: str | os.PathLike[str],
    *,
    key: SymmetricKey,
    version: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SealedUpload:
    """Seal ``source`` as model ``name``'s next key version (or ``version``) into the file
    ``dest``, hashing it on the way: what :func:`send_sealed` uploads, now or after a restart
    (keep ``dest`` and ``key``).  ``ValueError`` if ``source`` is not an ONNX model."""
    if not isinstance(owner, Owner):
        raise TypeError(f"owner must be an Owner, got {type(owner).__name__}")
    check_onnx_model(source)
    if version is None:
        try:
            version = owner.model(name).key_version + 1
        except NotFound:
            version = 1
    return _seal_file(owner.model_id(name), name, version, key, source, Path(dest), progress)


def send_sealed(
    owner: Owner,
    store: StoreClient,
    sealed: SealedUpload,
    *,
    key: SymmetricKey,
    upload_id: str = "",
    on_begin: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> UploadReceipt:
    """Upload a :class:`SealedUpload` through the gateway (resuming ``upload_id`` if given;
    ``on_begin`` is told the upload's id), then put ``key`` in the KeyService as its
    version."""

    def sent(done: int) -> None:
        if progress is not None:
            progress(done, sealed.size)

    with sealed.path.open("rb") as fh:
        stored = store.upload(
            sealed.model_id,
            fh,
            size=sealed.size,
            digest=sealed.digest,
            key_version=sealed.key_version,
            upload_id=upload_id,
            progress=sent,
            on_begin=None if on_begin is None else (lambda state: on_begin(state.upload_id)),
        )
    receipt = owner.put_model_key(sealed.name, key, version=sealed.key_version)
    return UploadReceipt(
        model_id=sealed.model_id,
        key_version=receipt.version,
        revocation_epoch=receipt.revocation_epoch,
        plain_bytes=sealed.plain_bytes,
        sealed_bytes=stored.size,
        digest=stored.digest.removeprefix("sha256:"),
        key_fingerprint=key.fingerprint,
    )


def _seal_file(
    model_id: str,
    name: str,
    version: int,
    key: SymmetricKey,
    source: str | os.PathLike[str] | BinaryIO,
    dest: Path,
    progress: Callable[[int], None] | None,
) -> SealedUpload:
    sealed_so_far = [0]

    def on_chunk(done: int) -> None:
        sealed_so_far[0] = done
        if progress is not None:
            progress(done)

    with contextlib.ExitStack() as stack:
        src: BinaryIO = (
            stack.enter_context(Path(source).open("rb"))
            if isinstance(source, str | os.PathLike)
            else source
        )
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            sink = _Hashing(fh)
            seal_model(
                key, src, cast(BinaryIO, sink), model_id=model_id, version=version,
                progress=on_chunk,
            )  # fmt: skip
            fh.flush()
            os.fsync(fh.fileno())
    return SealedUpload(
        model_id=model_id,
        name=name,
        key_version=version,
        path=dest,
        size=sink.size,
        digest=sink.hasher.hexdigest(),
        plain_bytes=sealed_so_far[0],
    )
