"""Uploads in progress: a staged file and a small record per upload, in one directory.

::

    <staging>/<upload_id>.json   what the owner declared (model, size, digest, key version),
                                 who the owner is, when the upload began
    <staging>/<upload_id>.part   the bytes received so far: its length is the offset

A chunk is written at the upload's offset whole or not at all: a write that fails is cut back
to where it began, so a broken connection or a full disk never leaves half a chunk behind.
The record is written once (atomically) and never changed; the offset is the staged file's
length, so a gateway that restarts finds every upload where it was (the running digest is
rebuilt from the staged bytes on first use).
Nothing here is secret: the bytes are a sealed model.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Final

from sealserve._log import get_logger

__all__ = ["StagedUpload", "Staging"]

_log = get_logger(__name__)
_RECORD_SCHEMA: Final = "sealserve.upload/1"
_HASH_CHUNK: Final = 1 << 20


@dataclasses.dataclass(eq=False)
class StagedUpload:
    """One upload in progress (the record and the running state)."""

    upload_id: str
    owner_id: str
    model_id: str
    size: int
    digest: str
    key_version: int
    created_at: float
    offset: int
    last_active: float
    #: SHA-256 of the first ``hashed`` bytes (``None`` until rebuilt after a restart).
    hasher: Any = None
    hashed: int = 0
    #: A chunk is being written (one at a time).
    busy: bool = False

    def same_as(self, *, model_id: str, size: int, digest: str, key_version: int) -> bool:
        return (self.model_id, self.size, self.digest, self.key_version) == (
            model_id,
            size,
            digest,
            key_version,
        )


class Staging:
    """The uploads staged in ``root`` (see the module docstring).  Its methods do file I/O:
    call them from a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _record(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.json"

    def part(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.part"

    def begin(
        self,
        *,
        owner_id: str,
        model_id: str,
        size: int,
        digest: str,
        key_version: int,
        now: float,
    ) -> StagedUpload:
        """A new, empty upload."""
        upload_id = secrets.token_urlsafe(16)
        record = {
            "schema": _RECORD_SCHEMA,
            "upload_id": upload_id,
            "owner_id": owner_id,
            "model_id": model_id,
            "size": size,
            "digest": digest,
            "key_version": key_version,
            "created_at": now,
        }
        fd = os.open(self.part(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        tmp = self.root / f".{upload_id}.json.tmp"
        tmp.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self._record(upload_id))
        return StagedUpload(
            upload_id=upload_id,
            owner_id=owner_id,
            model_id=model_id,
            size=size,
            digest=digest,
            key_version=key_version,
            created_at=now,
            offset=0,
            last_active=now,
            hasher=hashlib.sha256(),
        )

    def load(self) -> list[StagedUpload]:
        """The uploads a previous run left (damaged records and stray files are removed)."""
        found: list[StagedUpload] = []
        for record in sorted(self.root.glob("*.json")):
            upload_id = record.stem
            try:
                doc = json.loads(record.read_text(encoding="utf-8"))
                if doc.get("schema") != _RECORD_SCHEMA or doc.get("upload_id") != upload_id:
                    raise ValueError("not an upload record")
                st = self.part(upload_id).stat()
                found.append(
                    StagedUpload(
                        upload_id=upload_id,
                        owner_id=str(doc["owner_id"]),
                        model_id=str(doc["model_id"]),
                        size=int(doc["size"]),
                        digest=str(doc["digest"]),
                        key_version=int(doc["key_version"]),
                        created_at=float(doc["created_at"]),
                        offset=min(st.st_size, int(doc["size"])),
                        last_active=st.st_mtime,
                    )
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                _log.event("upload.damaged_record", upload_id=upload_id, error=type(exc).__name__)
                self.discard(upload_id)
        known = {u.upload_id for u in found}
        for part in self.root.glob("*.part"):
            if part.stem not in known:
                part.unlink(missing_ok=True)
        return found

    def hashed_with(self, upload: StagedUpload, data: memoryview) -> Any:
        """The running digest with ``data`` added, the upload's own left as it is (so the
        chunk can be hashed while its signature is checked, and dropped if that fails)."""
        self.catch_up(upload)
        hasher = upload.hasher.copy()
        hasher.update(data)
        return hasher

    def write(
        self, upload: StagedUpload, offset: int, data: memoryview, hasher: Any = None
    ) -> None:
        """Write ``data`` at ``offset`` (the upload's offset), whole or not at all; the
        running digest follows (``hasher``: it with ``data`` added already, from
        :meth:`hashed_with`).  ``OSError`` (the staged file is cut back first)."""
        if offset != upload.offset:
            raise ValueError(f"offset {offset} is not the upload's offset {upload.offset}")
        if hasher is None:
            hasher = self.hashed_with(upload, data)
        fd = os.open(self.part(upload.upload_id), os.O_WRONLY)
        try:
            done = 0
            try:
                while done < len(data):
                    n = os.pwrite(fd, data[done:], offset + done)
                    if n <= 0:
                        raise OSError(errno.EIO, "short write")
                    done += n
            except OSError:
                os.ftruncate(fd, offset)
                raise
        finally:
            os.close(fd)
        upload.hasher = hasher
        upload.offset += len(data)
        upload.hashed = upload.offset

    def catch_up(self, upload: StagedUpload) -> None:
        """Rebuild the running digest from the staged bytes (after a restart)."""
        if upload.hasher is not None and upload.hashed == upload.offset:
            return
        hasher = hashlib.sha256()
        remaining = upload.offset
        with self.part(upload.upload_id).open("rb") as fh:
            while remaining:
                block = fh.read(min(_HASH_CHUNK, remaining))
                if not block:
                    raise OSError(errno.EIO, "the staged file is shorter than its offset")
                hasher.update(block)
                remaining -= len(block)
        upload.hasher = hasher
        upload.hashed = upload.offset

    def digest(self, upload: StagedUpload) -> str:
        """Hex SHA-256 of the bytes received."""
        self.catch_up(upload)
        return str(upload.hasher.hexdigest())

    def head(self, upload: StagedUpload, n: int) -> bytes:
        """The first ``n`` bytes received (fewer if fewer arrived)."""
        with self.part(upload.upload_id).open("rb") as fh:
            return fh.read(n)

    def discard(self, upload_id: str) -> None:
        """Remove an upload's record and its bytes."""
        self._record(upload_id).unlink(missing_ok=True)
        self.part(upload_id).unlink(missing_ok=True)
