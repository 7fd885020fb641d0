"""Streams in and out of the model store: a writer that commits atomically, a reader that checks.

:class:`SealedModelWriter` is what :meth:`ModelStore.create` returns: a file-like object to
give ``sealserve.crypto.seal_model`` as its ``dst``, hashing as it writes to a staging file;
leaving the ``with`` block commits (the blob is renamed into place and the manifest written),
an exception discards everything::

    with store.create(model_id, key_version=1) as out:
        seal_model(key, plaintext_file, out, model_id=model_id, version=1)
    manifest = out.manifest

:class:`SealedModelReader` is what :meth:`ModelStore.open` returns: it reads the blob and
checks the digest when it reaches the end, raising
:class:`~sealserve.errors.StoreIntegrityError` there; nothing read is to be trusted before.
"""

from __future__ import annotations

import enum
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sealserve.errors import InstanceError

if TYPE_CHECKING:
    from sealserve.instance._store import ModelManifest

__all__ = ["BlobFile", "SealedModelReader", "SealedModelWriter", "WriterState"]


class WriterState(enum.Enum):
    OPENED = "opened"
    COMMITTED = "committed"
    ABORTED = "aborted"


class SealedModelWriter:
    """A staging file that becomes a stored model on :meth:`commit` (see the module docs)."""

    def __init__(
        self,
        fd: int,
        path: Path,
        *,
        finish: Callable[[Path, str, int, bytes], ModelManifest],
        header_bytes: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._file = os.fdopen(fd, "wb")
        self._path = path
        self._finish = finish
        self._header_bytes = header_bytes
        self._progress = progress
        self._hasher = hashlib.sha256()
        self._header = b""
        self._size = 0
        self.state = WriterState.OPENED
        #: The stored model's manifest, once committed.
        self.manifest: ModelManifest | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.state is not WriterState.OPENED:
            raise InstanceError(f"the model writer is {self.state.value}")
        view = memoryview(data).cast("B")
        if len(self._header) < self._header_bytes:
            self._header += bytes(view[: self._header_bytes - len(self._header)])
        self._hasher.update(view)
        self._file.write(view)
        self._size += len(view)
        if self._progress is not None:
            self._progress(self._size)
        return len(view)

    def commit(self) -> ModelManifest:
        """Finish the file, rename it into place, write the manifest; the manifest."""
        if self.state is not WriterState.OPENED:
            raise InstanceError(f"the model writer is {self.state.value}")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            manifest = self._finish(self._path, self._hasher.hexdigest(), self._size, self._header)
        except BaseException:
            self.abort()
            raise
        self.manifest = manifest
        self.state = WriterState.COMMITTED
        return manifest

    def abort(self) -> None:
        """Discard what was written (idempotent)."""
        if self.state is WriterState.COMMITTED:
            return
        self.state = WriterState.ABORTED
        self._file.close()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> SealedModelWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self.state is not WriterState.OPENED:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class BlobFile(Protocol):
    """What a reader reads a blob from: a file of the store (a local file, an fsspec file)."""

    def readinto(self, buffer: Any, /) -> int | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


class SealedModelReader(io.RawIOBase):
    """Reads a stored blob; the digest is checked when the end is reached."""

    def __init__(
        self,
        file: BlobFile,
        *,
        manifest: ModelManifest,
        check: Callable[[str, int], None],
    ) -> None:
        super().__init__()
        #: What the stream holds (trust the bytes only once the end was read).
        self.manifest = manifest
        self._file = file
        size = manifest.size
        self._check = check
        self._size = size
        self._hasher = hashlib.sha256()
        self._pos = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        n = self._file.readinto(view[:want]) if want else 0
        n = n or 0
        self._hasher.update(view[:n])
        self._pos += n
        if (n == 0 or self._pos >= self._size) and not self._checked:
            self._checked = True
            self._check(self._hasher.hexdigest(), self._size - self._pos)
        return n

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()
