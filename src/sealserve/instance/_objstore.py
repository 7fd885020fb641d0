"""The model store in object storage, through fsspec: the same layout as the directory store.

::

    store = ObjectModelStore("s3://models/sealserve")      # s3fs installed, AWS_* variables
    store = ObjectModelStore("memory://store")             # fsspec's in-process fake (tests)
    store = ObjectModelStore("file:///srv/models")         # a local or mounted directory

Keys under the URL are those of :class:`~sealserve.instance.ModelStore`'s directory
(``blobs/sha256/<hex>``, ``models/<owner_id>/<name>.json``, ``tmp/``).  Object stores have no
rename, so a write is: the blob to ``tmp/``, then moved to its content address (a copy and a
delete in S3), then the manifest the same way; a reader reads manifests only, and a manifest
names a blob only once that blob is complete.  Every read checks the digest, as the directory
store's do.  Credentials are the filesystem library's own business (for ``s3://``, s3fs reads
the usual ``AWS_*`` variables and files); nothing secret is stored here: blobs are sealed.

The gateway asks for a manifest on every request (:meth:`manifest_stamp`), so the answer of
the object store's metadata call is kept ``cache_ttl_s`` (2 s): a model replaced by another
process is seen within that time; one replaced through this object is seen at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.errors import StoreIntegrityError
from sealserve.instance._blobs import BlobFile, SealedModelWriter
from sealserve.instance._store import (
    _HEX,
    _IO_CHUNK,
    SEALED_HEADER_BYTES,
    ModelManifest,
    StoreReads,
    _check_version,
    _read_some,
    check_sealed_header,
    read_staged_header,
)
from sealserve.protocol import split_model_id

__all__ = ["ObjectModelStore"]

_log = get_logger(__name__)
#: fsspec's read-ahead for blobs: large, as a blob is always read whole.
_BLOCK: Final = 8 << 20
_STAMP_KEYS: Final = ("size", "ETag", "etag", "LastModified", "mtime", "created", "ino", "md5Hash")


class ObjectModelStore(StoreReads):
    """Sealed models in an fsspec filesystem (see the module docstring).

    ``filesystem`` is an fsspec filesystem to use instead of the one ``url`` names (then
    ``url`` only says where in it); ``staging`` the local directory that :meth:`create`
    seals into before the upload (default: the system's temporary directory).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        cache_ttl_s: float = 2.0,
        staging: str | os.PathLike[str] | None = None,
        filesystem: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(f"url must be an fsspec URL such as s3://bucket/prefix, got {url!r}")
        if not cache_ttl_s >= 0:
            raise ValueError(f"cache_ttl_s must be >= 0, got {cache_ttl_s!r}")
        if filesystem is None:
            import fsspec

            try:
                filesystem, base = fsspec.core.url_to_fs(url, **(storage_options or {}))
            except (ImportError, ValueError) as exc:
                raise ValueError(
                    f"cannot open the model store {url!r}: {exc} (an s3:// or gs:// store "
                    "needs its fsspec backend installed, e.g. pip install s3fs)"
                ) from None
        else:
            base = url.split("://", 1)[1]
        self.url = url
        self._fs = filesystem
        self._base = str(base).rstrip("/")
        self._clock = clock
        self._ttl = float(cache_ttl_s)
        self._staging = Path(staging) if staging is not None else None
        self._lock = threading.Lock()
        self._stamps: dict[str, tuple[float, tuple[Any, ...] | None]] = {}
        self._made: set[str] = set()

    @property
    def location(self) -> str:
        return self.url

    @property
    def filesystem(self) -> Any:
        """The fsspec filesystem underneath."""
        return self._fs

    def staging_dir(self) -> None:
        """None: an object store adopts a staged file by uploading it."""
        return

    # -- keys ----------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join((self._base, *parts))

    def _blob_key(self, digest: str) -> str:
        return self._key("blobs", "sha256", digest)

    def _manifest_key(self, model_id: str) -> str:
        owner, name = split_model_id(model_id)
        return self._key("models", owner, f"{name}.json")

    def _parent_of(self, key: str) -> None:
        """Make ``key``'s parent where the filesystem has directories (a local one); object
        stores have none, and their ``makedirs`` is a no-op (or makes the bucket)."""
        parent = key.rsplit("/", 1)[0]
        if parent in self._made:
            return
        self._fs.makedirs(parent, exist_ok=True)
        self._made.add(parent)

    def _local_staging(self) -> Path:
        folder = self._staging or Path(tempfile.gettempdir())
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder

    # -- writing -------------------------------------------------------------------------------

    def create(
        self,
        model_id: str,
        *,
        key_version: int,
        progress: Callable[[int], None] | None = None,
    ) -> SealedModelWriter:
        """A writer for a new sealed model of ``model_id``: it is staged in a local file and
        uploaded when the writer commits (as :meth:`ModelStore.create
        <sealserve.instance.ModelStore.create>`)."""
        split_model_id(model_id)
        _check_version(key_version)
        fd, tmp_name = tempfile.mkstemp(prefix="sealserve-put-", dir=self._local_staging())

        def finish(tmp: Path, digest: str, size: int, header: bytes) -> ModelManifest:
            try:
                return self._commit(model_id, key_version, tmp, digest, size, header)
            finally:
                tmp.unlink(missing_ok=True)

        return SealedModelWriter(
            fd, Path(tmp_name), finish=finish, header_bytes=SEALED_HEADER_BYTES, progress=progress
        )

    def put(
        self,
        model_id: str,
        sealed: BinaryIO | bytes | bytearray | memoryview,
        *,
        key_version: int,
        progress: Callable[[int], None] | None = None,
    ) -> ModelManifest:
        """Store a sealed model read from ``sealed`` (a stream, or bytes) under ``model_id``."""
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
        """Upload the sealed model staged in ``path`` (its ``digest`` and ``size`` computed
        by the caller) as ``model_id``, then remove the file.  ``ValueError`` if it is not a
        sealed model of ``size`` bytes (the file is then left where it is)."""
        split_model_id(model_id)
        _check_version(key_version)
        if not _HEX.fullmatch(digest):
            raise ValueError(f"digest must be 64 lowercase hex digits, got {digest!r}")
        header = read_staged_header(Path(path), size, key_version)
        manifest = self._commit(model_id, key_version, Path(path), digest, size, header)
        Path(path).unlink(missing_ok=True)
        return manifest

    def _commit(
        self, model_id: str, key_version: int, local: Path, digest: str, size: int, header: bytes
    ) -> ModelManifest:
        chunk_size = check_sealed_header(header, size, key_version)
        blob = self._blob_key(digest)
        if not self._fs.exists(blob):
            tmp = self._key("tmp", f"put-{secrets.token_hex(8)}")
            self._parent_of(tmp)
            self._parent_of(blob)
            self._fs.put_file(str(local), tmp)
            try:
                self._fs.mv(tmp, blob)
            except BaseException:
                self._rm_quietly(tmp)
                raise
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

    def _write_manifest(self, manifest: ModelManifest) -> None:
        data = (json.dumps(manifest.to_json(), sort_keys=True) + "\n").encode("utf-8")
        tmp = self._key("tmp", f"manifest-{secrets.token_hex(8)}.json")
        final = self._manifest_key(manifest.model_id)
        self._parent_of(tmp)
        self._parent_of(final)
        self._fs.pipe_file(tmp, data)
        try:
            self._fs.mv(tmp, final)
        except BaseException:
            self._rm_quietly(tmp)
            raise
        self._forget(manifest.model_id)

    def remove(self, model_id: str) -> bool:
        """Forget ``model_id`` (and its blob, unless another model has the same bytes)."""
        manifest = self._read_manifest(model_id)
        if manifest is None:
            return False
        self._rm_quietly(self._manifest_key(model_id))
        self._forget(model_id)
        self._drop_if_unreferenced(manifest.digest)
        _log.event("store.removed", model_id=model_id)
        return True

    def _drop_if_unreferenced(self, digest: str) -> None:
        if any(m.digest == digest for m in self.list()):
            return
        self._rm_quietly(self._blob_key(digest))

    def _rm_quietly(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(key)

    # -- reading -------------------------------------------------------------------------------

    def _forget(self, model_id: str) -> None:
        with self._lock:
            self._stamps.pop(model_id, None)

    def manifest_stamp(self, model_id: str) -> tuple[Any, ...] | None:
        """What identifies the current manifest of ``model_id`` (the object's size, ETag or
        times), or ``None`` if there is none; the store's answer is kept ``cache_ttl_s``."""
        now = time.monotonic()
        with self._lock:
            cached = self._stamps.get(model_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            info = self._fs.info(self._manifest_key(model_id))
        except FileNotFoundError:
            stamp: tuple[Any, ...] | None = None
        else:
            stamp = tuple(str(info.get(key)) for key in _STAMP_KEYS)
        with self._lock:
            self._stamps[model_id] = (now, stamp)
        return stamp

    def _manifest_bytes(self, model_id: str) -> bytes | None:
        try:
            raw: bytes = self._fs.cat_file(self._manifest_key(model_id))
        except FileNotFoundError:
            return None
        return raw

    def list(self) -> list[ModelManifest]:
        """Every model in the store, sorted by id (damaged manifests are skipped and logged)."""
        prefix = self._key("models") + "/"
        try:
            keys = self._fs.find(self._key("models"))
        except FileNotFoundError:
            return []
        out: list[ModelManifest] = []
        for key in sorted(str(k) for k in keys):
            rest = key[len(prefix) :] if key.startswith(prefix) else key.split("/models/", 1)[-1]
            parts = rest.split("/")
            if len(parts) != 2 or not parts[1].endswith(".json"):
                continue
            model_id = f"{parts[0]}/{parts[1].removesuffix('.json')}"
            try:
                manifest = self._read_manifest(model_id)
            except (StoreIntegrityError, ValueError) as exc:
                _log.event("store.damaged_manifest", path=key, error=str(exc))
                continue
            if manifest is not None:
                out.append(manifest)
        return out

    def _open_blob(self, manifest: ModelManifest) -> BlobFile:
        key = self._blob_key(manifest.digest)
        try:
            size = int(self._fs.size(key))
        except FileNotFoundError:
            raise StoreIntegrityError(
                f"the blob of model {manifest.model_id!r} is missing from the store"
            ) from None
        if size != manifest.size:
            self._integrity_failure(manifest, f"size {size}, manifest says {manifest.size}")
        handle: BlobFile = self._fs.open(key, "rb", block_size=_BLOCK, cache_type="none")
        return _Closing(handle)

    def __repr__(self) -> str:
        return f"ObjectModelStore({self.url!r})"


class _Closing:
    """A blob file usable in ``with`` whatever the backend's file object supports."""

    def __init__(self, handle: BlobFile) -> None:
        self._handle = handle

    def readinto(self, buffer: Any, /) -> int | None:
        return self._handle.readinto(buffer)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
