"""The model store: sealed models in a content-addressed directory.  Ciphertext only.

Layout under the store's root::

    blobs/sha256/<hex>                 a sealed model (sealserve.crypto.seal_model), named by
                                       the SHA-256 of its bytes
    models/<owner_id>/<name>.json      the manifest of model ``<owner_id>/<name>``
    tmp/                               staging for atomic writes

:meth:`ModelStore.create` gives a writer to seal into (``seal_model(key, src, writer, ...)``,
with the model version the manifest names: the store refuses a file bound to another one),
:meth:`ModelStore.open` a reader.  A manifest::

    {"schema": "sealserve.store.manifest/1", "model_id": "<owner_id>/<name>",
     "digest": "sha256:<hex>", "size": <bytes>, "key_version": <n>, "chunk_size": <bytes>,
     "stored_at": <unix seconds>}

:meth:`ModelStore.put` streams a sealed model into ``tmp/`` while hashing it, then renames it
into place and writes the manifest (also by rename), so a reader sees the old model or the new
one, never half of one.  Every read checks the digest while it reads
(:meth:`ModelStore.read_into`, which fills a caller's buffer such as an ipc loan): a blob that
does not match its manifest raises :class:`~sealserve.errors.StoreIntegrityError` and is not
served.  The store holds nothing secret: the runtime alone can unseal what it holds.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol, runtime_checkable

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.errors import ModelNotStored, StoreIntegrityError
from sealserve.instance._blobs import BlobFile, SealedModelReader, SealedModelWriter
from sealserve.protocol import SEALED_MODEL_HEADER_SIZE, SealedModelHeader, split_model_id

__all__ = [
    "MANIFEST_SCHEMA",
    "SEALED_HEADER_BYTES",
    "ModelManifest",
    "ModelStore",
    "SealedModelStore",
    "StoreReads",
    "check_sealed_header",
    "open_store",
]

_log = get_logger(__name__)

MANIFEST_SCHEMA: Final = "sealserve.store.manifest/1"
_IO_CHUNK: Final = 1 << 20
_HEX = re.compile(r"[0-9a-f]{64}")
#: Bytes of a sealed model's header (sealserve.crypto's streaming format).
SEALED_HEADER_BYTES: Final = SEALED_MODEL_HEADER_SIZE


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelManifest:
    """What the store knows of one sealed model (nothing secret)."""

    model_id: str
    #: Hex SHA-256 of the sealed blob.
    digest: str
    size: int
    key_version: int
    chunk_size: int
    stored_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "model_id": self.model_id,
            "digest": f"sha256:{self.digest}",
            "size": self.size,
            "key_version": self.key_version,
            "chunk_size": self.chunk_size,
            "stored_at": self.stored_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> ModelManifest:
        """Parse a manifest; ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(f"not a manifest of schema {MANIFEST_SCHEMA!r}")
        digest = data.get("digest")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise ValueError(f"manifest 'digest' has value {digest!r}")
        hexdigest = digest.removeprefix("sha256:")
        if not _HEX.fullmatch(hexdigest):
            raise ValueError(f"manifest 'digest' has value {digest!r}")
        model_id = data.get("model_id")
        split_model_id(model_id)  # type: ignore[arg-type]
        values: dict[str, int] = {}
        for name in ("size", "key_version", "chunk_size"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"manifest {name!r} has value {value!r}")
            values[name] = value
        stored_at = data.get("stored_at", 0)
        if isinstance(stored_at, bool) or not isinstance(stored_at, int | float):
            raise ValueError(f"manifest 'stored_at' has value {stored_at!r}")
        return cls(model_id=str(model_id), digest=hexdigest, stored_at=float(stored_at), **values)


class StoreReads(abc.ABC):
    """The manifest and digest-checked reads every store shares; a store supplies
    :meth:`_manifest_bytes` (the stored manifest, ``None`` if there is none) and
    :meth:`_open_blob` (a file of the blob, its size checked against the manifest)."""

    @abc.abstractmethod
    def _manifest_bytes(self, model_id: str) -> bytes | None: ...

    @abc.abstractmethod
    def _open_blob(self, manifest: ModelManifest) -> BlobFile: ...

    def _read_manifest(self, model_id: str) -> ModelManifest | None:
        raw = self._manifest_bytes(model_id)
        if raw is None:
            return None
        try:
            manifest = ModelManifest.from_json(json.loads(raw))
        except (ValueError, json.JSONDecodeError) as exc:
            raise StoreIntegrityError(
                f"the manifest of model {model_id!r} in the store is damaged: {exc}"
            ) from None
        if manifest.model_id != model_id:
            raise StoreIntegrityError(
                f"the manifest at the place of model {model_id!r} names {manifest.model_id!r}"
            )
        return manifest

    def get(self, model_id: str) -> ModelManifest:
        """The manifest of ``model_id``, read afresh; :class:`~sealserve.errors.ModelNotStored`
        if none."""
        manifest = self._read_manifest(model_id)
        if manifest is None:
            raise ModelNotStored(f"the model store has no model {model_id!r}")
        return manifest

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and self._read_manifest(model_id) is not None

    def read_into(self, model_id: str, out: memoryview) -> ModelManifest:
        """Read the sealed model into the first ``size`` bytes of ``out`` (e.g. an ipc loan),
        checking its digest on the way; raises :class:`~sealserve.errors.StoreIntegrityError`
        if it does not match (then ``out`` holds nothing usable: do not publish it)."""
        manifest = self.get(model_id)
        if len(out) < manifest.size:
            raise ValueError(f"out has {len(out)} bytes; model {model_id!r} is {manifest.size}")
        self._read_verified(manifest, out[: manifest.size])
        return manifest

    def open(self, model_id: str) -> SealedModelReader:
        """A stream of the sealed model; its digest is checked when the end is read
        (:class:`~sealserve.errors.StoreIntegrityError` there).  ``.manifest`` says what it
        is.  Use it as a context manager."""
        manifest = self.get(model_id)

        def check(digest: str, missing: int) -> None:
            self._check_digest(manifest, digest, missing)

        return SealedModelReader(self._open_blob(manifest), manifest=manifest, check=check)

    def read(self, model_id: str) -> tuple[ModelManifest, bytes]:
        """The manifest and the (verified) sealed bytes of ``model_id``."""
        manifest = self.get(model_id)
        buffer = bytearray(manifest.size)
        self._read_verified(manifest, memoryview(buffer))
        return manifest, bytes(buffer)

    def verify(self, model_id: str) -> ModelManifest:
        """Read ``model_id`` fully and check its digest (without keeping it)."""
        manifest = self.get(model_id)
        scratch = memoryview(bytearray(min(manifest.size, _IO_CHUNK)))
        hasher = hashlib.sha256()
        with self._open_blob(manifest) as fh:
            remaining = manifest.size
            while remaining:
                n = fh.readinto(scratch[: min(remaining, len(scratch))])
                if not n:
                    break
                hasher.update(scratch[:n])
                remaining -= n
        self._check_digest(manifest, hasher.hexdigest(), remaining)
        return manifest

    def _read_verified(self, manifest: ModelManifest, out: memoryview) -> None:
        hasher = hashlib.sha256()
        with self._open_blob(manifest) as fh:
            pos = 0
            while pos < manifest.size:
                n = fh.readinto(out[pos : min(pos + _IO_CHUNK, manifest.size)])
                if not n:
                    break
                hasher.update(out[pos : pos + n])
                pos += n
        self._check_digest(manifest, hasher.hexdigest(), manifest.size - pos)

    def _check_digest(self, manifest: ModelManifest, digest: str, missing: int) -> None:
        if missing:
            self._integrity_failure(manifest, f"{missing} bytes short")
        if digest != manifest.digest:
            self._integrity_failure(manifest, "digest mismatch")

    def _integrity_failure(self, manifest: ModelManifest, reason: str) -> None:
        _log.event("store.integrity_failure", model_id=manifest.model_id, reason=reason)
        raise StoreIntegrityError(
            f"the stored blob of model {manifest.model_id!r} does not match its digest "
            f"({reason}); it is not served: upload the model again"
        )


@runtime_checkable
class SealedModelStore(Protocol):
    """What the platform, the instance host and the upload service need of a model store:
    :class:`ModelStore` (a directory, the default) and
    :class:`~sealserve.instance.ObjectModelStore` (object storage through fsspec) are two.
    :func:`open_store` opens the one a location names."""

    @property
    def location(self) -> str:
        """Where it is: a directory, or an fsspec URL (nothing secret)."""
        ...

    def get(self, model_id: str) -> ModelManifest: ...

    def list(self) -> list[ModelManifest]: ...

    def manifest_stamp(self, model_id: str) -> tuple[Any, ...] | None: ...

    def read_into(self, model_id: str, out: memoryview) -> ModelManifest: ...

    def open(self, model_id: str) -> SealedModelReader: ...

    def read(self, model_id: str) -> tuple[ModelManifest, bytes]: ...

    def verify(self, model_id: str) -> ModelManifest: ...

    def create(
        self,
        model_id: str,
        *,
        key_version: int,
        progress: Callable[[int], None] | None = None,
    ) -> SealedModelWriter: ...

    def put(
        self,
        model_id: str,
        sealed: BinaryIO | bytes | bytearray | memoryview,
        *,
        key_version: int,
        progress: Callable[[int], None] | None = None,
    ) -> ModelManifest: ...

    def adopt(
        self, model_id: str, path: Path, *, digest: str, size: int, key_version: int
    ) -> ModelManifest: ...

    def remove(self, model_id: str) -> bool: ...

    def staging_dir(self) -> Path | None:
        """A local directory from which :meth:`adopt` renames instead of copying, if any."""
        ...


def open_store(
    location: str | os.PathLike[str], *, clock: Clock = SYSTEM_CLOCK
) -> SealedModelStore:
    """The model store at ``location``: a directory path (:class:`ModelStore`), or an fsspec
    URL such as ``s3://bucket/prefix``, ``memory://name`` or ``file:///srv/models``
    (:class:`~sealserve.instance.ObjectModelStore`: objects, no renames).  ``ValueError`` for
    an empty location."""
    text = os.fspath(location)
    if not text:
        raise ValueError("the model store location is empty; give a directory or a URL")
    if "://" in text:
        from sealserve.instance._objstore import ObjectModelStore

        return ObjectModelStore(text, clock=clock)
    return ModelStore(text, clock=clock)


class ModelStore(StoreReads):
    """A content-addressed directory of sealed models (see the module docstring).

    Several processes may read and write one store: every change is an atomic rename.
    """

    def __init__(self, root: str | os.PathLike[str], *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.root = Path(root)
        self._clock = clock

    @property
    def location(self) -> str:
        return str(self.root)

    def staging_dir(self) -> Path:
        """``<root>/tmp``: a file staged under it is adopted by a rename (same file system)."""
        return self._tmp_dir()

    # -- paths ---------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest

    def _manifest_path(self, model_id: str) -> Path:
        owner, name = split_model_id(model_id)
        return self.root / "models" / owner / f"{name}.json"

    def _tmp_dir(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tmp

    # -- writing -------------------------------------------------------------------------------

    def create(
        self,
        model_id: str,
        *,
        key_version: int,
        progress: Callable[[int], None] | None = None,
    ) -> SealedModelWriter:
        """A writer for a new sealed model of ``model_id`` (give it to ``seal_model`` as
        ``dst``); leaving its ``with`` block stores the model atomically, an error discards
        it.  ``key_version`` is the version of the model key it is sealed under."""
        split_model_id(model_id)
        _check_version(key_version)
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=self._tmp_dir())

        def finish(tmp: Path, digest: str, size: int, header: bytes) -> ModelManifest:
            return self._commit(model_id, key_version, tmp, digest, size, header)

        return SealedModelWriter(
            fd,
            Path(tmp_name),
            finish=finish,
            header_bytes=SEALED_MODEL_HEADER_SIZE,
            progress=progress,
        )

    def put(
        self,
        model_id: str,
        sealed: BinaryIO | bytes | bytearray | memoryview,
        *,
        key_version: int,
        progress: Callable[[int], None] | None = None,
    ) -> ModelManifest:
        """Store a sealed model read from ``sealed`` (a stream, or bytes) under ``model_id``.

        ``key_version`` is the version of the model key it is sealed under (the KeyService's).
        Streaming and atomic: the digest is computed while writing; the previous model of that
        id (if any) stays readable until the new one is complete.
        """
        source: Any = sealed
        if isinstance(sealed, bytes | bytearray | memoryview):
            source = io.BytesIO(sealed)
        with self.create(model_id, key_version=key_version, progress=progress) as out:
            view = memoryview(bytearray(_IO_CHUNK))
            while n := _read_some(source, view):
                out.write(view[:n])
        assert out.manifest is not None
        return out.manifest

    def adopt(
        self, model_id: str, path: Path, *, digest: str, size: int, key_version: int
    ) -> ModelManifest:
        """Store the sealed model staged in the file ``path`` (whose SHA-256 ``digest`` and
        ``size`` the caller computed while receiving it) under ``model_id``, taking the file:
        renamed into place when it is on the store's file system (under :meth:`staging_dir`,
        say), else copied and removed.
        ``ValueError`` if it is not a sealed model or not ``size`` bytes (the file is then
        left where it is)."""
        split_model_id(model_id)
        _check_version(key_version)
        if not _HEX.fullmatch(digest):
            raise ValueError(f"digest must be 64 lowercase hex digits, got {digest!r}")
        path = Path(path)
        header = read_staged_header(path, size, key_version)
        tmp = path
        if path.stat().st_dev != self._tmp_dir().stat().st_dev:
            fd, name = tempfile.mkstemp(prefix="adopt-", dir=self._tmp_dir())
            os.close(fd)
            tmp = Path(name)
            try:
                shutil.copyfile(path, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            path.unlink()
        return self._commit(model_id, key_version, tmp, digest, size, header)

    def _commit(
        self, model_id: str, key_version: int, tmp: Path, digest: str, size: int, header: bytes
    ) -> ModelManifest:
        chunk_size = check_sealed_header(header, size, key_version)
        blob = self._blob_path(digest)
        blob.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        if blob.exists():
            tmp.unlink()
        else:
            tmp.replace(blob)
        manifest = ModelManifest(
            model_id=model_id,
            digest=digest,
            size=size,
            key_version=key_version,
            chunk_size=chunk_size,
            stored_at=round(self._clock.time(), 3),
        )
        previous = self._read_manifest(model_id)
        self._write_manifest(manifest)
        if previous is not None and previous.digest != digest:
            self._drop_if_unreferenced(previous.digest)
        _log.event(
            "store.put", model_id=model_id, digest=digest, size=size, key_version=key_version
        )
        return manifest

    def remove(self, model_id: str) -> bool:
        """Forget ``model_id`` (and its blob, unless another model has the same bytes)."""
        manifest = self._read_manifest(model_id)
        if manifest is None:
            return False
        self._manifest_path(model_id).unlink(missing_ok=True)
        self._drop_if_unreferenced(manifest.digest)
        _log.event("store.removed", model_id=model_id)
        return True

    def _write_manifest(self, manifest: ModelManifest) -> None:
        path = self._manifest_path(manifest.model_id)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self._tmp_dir() / f"manifest-{secrets.token_hex(8)}.json"
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                json.dump(manifest.to_json(), fh, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _drop_if_unreferenced(self, digest: str) -> None:
        if any(m.digest == digest for m in self.list()):
            return
        with contextlib.suppress(FileNotFoundError):
            self._blob_path(digest).unlink()

    # -- reading -------------------------------------------------------------------------------

    def manifest_stamp(self, model_id: str) -> tuple[int, int, int] | None:
        """What identifies the current manifest of ``model_id`` (inode, size, mtime), or
        ``None`` if there is none: a manifest is replaced, never changed in place, so an
        unchanged stamp means an unchanged manifest (a cache need not read it again)."""
        try:
            st = os.stat(self._manifest_path(model_id))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _manifest_bytes(self, model_id: str) -> bytes | None:
        try:
            return self._manifest_path(model_id).read_bytes()
        except FileNotFoundError:
            return None

    def list(self) -> list[ModelManifest]:
        """Every model in the store, sorted by id (damaged manifests are skipped and logged)."""
        out: list[ModelManifest] = []
        base = self.root / "models"
        if not base.is_dir():
            return out
        for path in sorted(base.glob("*/*.json")):
            model_id = f"{path.parent.name}/{path.stem}"
            try:
                manifest = self._read_manifest(model_id)
            except (StoreIntegrityError, ValueError) as exc:
                _log.event("store.damaged_manifest", path=str(path), error=str(exc))
                continue
            if manifest is not None:
                out.append(manifest)
        return out

    def _open_blob(self, manifest: ModelManifest) -> io.FileIO:
        path = self._blob_path(manifest.digest)
        try:
            fh = path.open("rb", buffering=0)
        except FileNotFoundError:
            raise StoreIntegrityError(
                f"the blob of model {manifest.model_id!r} is missing from the store"
            ) from None
        size = os.fstat(fh.fileno()).st_size
        if size != manifest.size:
            fh.close()
            self._integrity_failure(manifest, f"size {size}, manifest says {manifest.size}")
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fh

    def __repr__(self) -> str:
        return f"ModelStore(root={str(self.root)!r})"


def _read_some(source: Any, view: memoryview) -> int:
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        return int(readinto(view) or 0)
    data = source.read(len(view))
    if not data:
        return 0
    view[: len(data)] = data
    return len(data)


def _check_version(key_version: int) -> None:
    if isinstance(key_version, bool) or not isinstance(key_version, int) or key_version < 1:
        raise ValueError(f"key_version must be an int >= 1, got {key_version!r}")


def read_staged_header(path: Path, size: int, key_version: int) -> bytes:
    """The first bytes of the staged file ``path``, once it is synced and checked to hold
    ``size`` bytes and the header of a sealed model of ``key_version`` (``ValueError``
    otherwise)."""
    with path.open("rb") as fh:
        header = fh.read(SEALED_MODEL_HEADER_SIZE)
        actual = os.fstat(fh.fileno()).st_size
        if actual != size:
            raise ValueError(f"the staged file holds {actual} bytes, not {size}")
        os.fsync(fh.fileno())
    check_sealed_header(header, size, key_version)
    return header


def check_sealed_header(header: bytes, size: int, key_version: int | None = None) -> int:
    """The chunk size a sealed model's first bytes declare; ``ValueError`` if they are not
    the header of sealserve's sealed-model format (``size``: the whole model's bytes) or,
    given ``key_version``, if the model is bound to another version."""
    if len(header) < SEALED_MODEL_HEADER_SIZE:
        raise ValueError(f"{size} bytes is not a sealed model (too short for its header)")
    try:
        parsed = SealedModelHeader.parse(header)
    except ValueError as exc:
        raise ValueError(f"not a sealed model of this sealserve: {exc}") from None
    if key_version is not None and parsed.model_version != key_version:
        raise ValueError(
            f"the sealed model is bound to version {parsed.model_version}, not {key_version}: "
            "seal it for the version it is stored as"
        )
    return parsed.chunk_size
