"""Streaming model sealing: fixed-size chunks, each its own AES-256-GCM message.

A sealed model is a header followed by chunks (the STREAM construction of Hoang, Reyhanitabar,
Rogaway and Vizár, as in Tink's streaming AEAD)::

    header := "SSM" format:u8=2 chunk_size:u32 salt:32 model_version:u32
    chunk  := ciphertext (chunk_size bytes; the last chunk 0..chunk_size) tag:16

Each file gets its own key, ``HKDF(model key, salt, label="sealserve/model", model_id,
model_version, chunk_size)``; chunk ``i`` is encrypted under the nonce ``u64(i) || 0x000000 ||
last`` with the header as associated data.  So a chunk moved to another position, a chunk from
another file or model, a missing final chunk, or a chunk after the last all fail
authentication: truncation, reordering, duplication and extension are detected.

The file binds the model's id *and its version* (the KeyService's key version it is uploaded
under), inside the authenticated stream: unsealing takes the version expected and fails for any
other, so a store cannot pass an older sealed file off as the current one, even when the owner
sealed both under the same key.  Format 1 (no version) is refused.  The plaintext length
follows from the sealed length, so unsealing allocates its output once and decrypts each chunk
straight into it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from collections.abc import Callable
from typing import BinaryIO, Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealserve._log import get_logger
from sealserve.crypto._buffers import Buffer, as_bytes_view, zero
from sealserve.crypto._keys import SymmetricKey, derive_key
from sealserve.errors import InvalidEnvelope

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_MODEL_BYTES",
    "MAX_MODEL_VERSION",
    "MIN_CHUNK_SIZE",
    "SEALED_MODEL_HEADER_SIZE",
    "SealedModelHeader",
    "seal_model",
    "sealed_model_size",
    "unseal_model",
    "unseal_model_stream",
]

_MAGIC: Final = b"SSM"
_FORMAT: Final = 2
_HEADER = struct.Struct(">3sBI32sI")
_NONCE = struct.Struct(">Q3xB")
_TAG: Final = 16

DEFAULT_CHUNK_SIZE: Final = 1 << 20
MAX_CHUNK_SIZE: Final = 1 << 20
MIN_CHUNK_SIZE: Final = 64
#: Largest model :func:`seal_model` accepts (64 GiB).
MAX_MODEL_BYTES: Final = 1 << 36
#: Largest model version (the KeyService's key versions fit).
MAX_MODEL_VERSION: Final = (1 << 31) - 1
#: Bytes of a sealed model's header (what :meth:`SealedModelHeader.parse` reads).
SEALED_MODEL_HEADER_SIZE: Final = _HEADER.size

_log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class SealedModelHeader:
    """What a sealed model's header says in the clear (authenticated only by unsealing)."""

    chunk_size: int
    #: The model version the file is sealed for.
    model_version: int

    @classmethod
    def parse(cls, header: Buffer) -> SealedModelHeader:
        """The header of a sealed model (its first :data:`SEALED_MODEL_HEADER_SIZE` bytes);
        ``ValueError`` saying why when it is not one (an older format names itself)."""
        view = as_bytes_view(header, "header")
        if len(view) < _HEADER.size:
            raise ValueError(f"a sealed model starts with a {_HEADER.size}-byte header")
        magic, fmt, chunk_size, _, version = _HEADER.unpack_from(view, 0)
        if magic != _MAGIC:
            raise ValueError("not a sealed model")
        if fmt != _FORMAT:
            raise ValueError(
                f"sealed in format {fmt}; this sealserve reads format {_FORMAT} only "
                "(seal and upload the model again)"
            )
        in_range = 1 <= version <= MAX_MODEL_VERSION
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or not in_range:
            raise ValueError("the sealed model's header is malformed")
        return cls(chunk_size=int(chunk_size), model_version=int(version))


def sealed_model_size(plaintext_len: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Size of a sealed model whose plaintext is ``plaintext_len`` bytes."""
    _check_chunk_size(chunk_size)
    if not 0 <= plaintext_len <= MAX_MODEL_BYTES:
        raise ValueError(
            f"plaintext_len must be within [0, {MAX_MODEL_BYTES}], got {plaintext_len!r}"
        )
    chunks = max(1, -(-plaintext_len // chunk_size))
    return _HEADER.size + plaintext_len + chunks * _TAG


def seal_model(
    key: SymmetricKey,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    model_id: str,
    version: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Read a model from ``src`` to its end, write it sealed to ``dst``; return bytes written.

    ``version`` is the model's version (the KeyService's key version it is uploaded under):
    the file opens only for that version.  Memory stays bounded by three chunks whatever the
    model's size.  ``progress``, if given, is called after each chunk with the number of
    plaintext bytes sealed so far.
    """
    _check_key(key)
    _check_model_id(model_id)
    _check_version(version)
    _check_chunk_size(chunk_size)
    salt = os.urandom(32)
    header = _HEADER.pack(_MAGIC, _FORMAT, chunk_size, salt, version)
    aead = _file_cipher(key, salt, model_id, version, chunk_size)
    current, ahead = bytearray(chunk_size), bytearray(chunk_size)
    sealed = bytearray(chunk_size + _TAG)
    sealed_view = memoryview(sealed)
    written = _write_all(dst, header)
    n_current = _read_full(src, current)
    index = 0
    done = 0
    while True:
        n_ahead = _read_full(src, ahead) if n_current == chunk_size else 0
        last = n_ahead == 0
        done += n_current
        if done > MAX_MODEL_BYTES:
            raise ValueError(f"model is larger than {MAX_MODEL_BYTES} bytes")
        out = sealed_view[: n_current + _TAG]
        aead.encrypt_into(_NONCE.pack(index, last), memoryview(current)[:n_current], header, out)
        written += _write_all(dst, out)
        if progress is not None:
            progress(done)
        if last:
            return written
        current, ahead, n_current = ahead, current, n_ahead
        index += 1


def unseal_model(
    key: SymmetricKey,
    sealed: Buffer,
    *,
    model_id: str,
    version: int,
    out: Buffer | None = None,
) -> bytearray | memoryview:
    """The plaintext of a sealed model held in memory (bytes, an mmap, shared memory...).

    ``version`` is the model version expected: a file sealed for any other fails, as does one
    sealed for another model.  The output is allocated once (or is ``out``, a writable buffer
    at least as large as the plaintext, whose first bytes are then returned as a memoryview)
    and every chunk is decrypted straight into it; no other copy is made.  Every failure raises
    the same :class:`~sealserve.errors.InvalidEnvelope`, after zeroing what was written.
    """
    _check_key(key)
    _check_model_id(model_id)
    _check_version(version)
    view = as_bytes_view(sealed, "sealed")
    if len(view) < _HEADER.size:
        _reject("length", length=len(view))
    header = bytes(view[: _HEADER.size])
    chunk_size, salt = _parse_header(header, version)
    plain_len, chunks = _layout(len(view), chunk_size)
    result, target = _output(plain_len, out)
    aead = _file_cipher(key, salt, model_id, version, chunk_size)
    pos = _HEADER.size
    for index in range(chunks):
        last = index == chunks - 1
        n = plain_len - index * chunk_size if last else chunk_size
        window = target[index * chunk_size : index * chunk_size + n]
        try:
            aead.decrypt_into(_NONCE.pack(index, last), view[pos : pos + n + _TAG], header, window)
        except InvalidTag:
            zero(target[: index * chunk_size + n])
            _reject("tag", chunk=index)
        pos += n + _TAG
    return result


def unseal_model_stream(
    key: SymmetricKey,
    src: BinaryIO,
    *,
    model_id: str,
    version: int,
    size: int | None = None,
    out: Buffer | None = None,
    progress: Callable[[int], None] | None = None,
) -> bytearray | memoryview:
    """Like :func:`unseal_model`, reading the sealed model from ``src`` (a file, a socket).

    ``size`` is the sealed length; without it ``src`` must be seekable and is read from its
    current position to its end.  Extra memory is one chunk.  ``progress``, if given, is
    called after each chunk with the number of plaintext bytes unsealed so far.
    """
    _check_key(key)
    _check_model_id(model_id)
    _check_version(version)
    total = _remaining(src) if size is None else size
    if total < 0:
        raise ValueError(f"size must be >= 0, got {total!r}")
    header = bytearray(_HEADER.size)
    if total < _HEADER.size or _read_full(src, header) != _HEADER.size:
        _reject("length", length=total)
    chunk_size, salt = _parse_header(bytes(header), version)
    plain_len, chunks = _layout(total, chunk_size)
    result, target = _output(plain_len, out)
    aead = _file_cipher(key, salt, model_id, version, chunk_size)
    scratch = memoryview(bytearray(chunk_size + _TAG))
    for index in range(chunks):
        last = index == chunks - 1
        n = plain_len - index * chunk_size if last else chunk_size
        piece = scratch[: n + _TAG]
        window = target[index * chunk_size : index * chunk_size + n]
        if _read_full(src, piece) != len(piece):
            zero(target[: index * chunk_size])
            _reject("truncated", chunk=index)
        try:
            aead.decrypt_into(_NONCE.pack(index, last), piece, bytes(header), window)
        except InvalidTag:
            zero(target[: index * chunk_size + n])
            _reject("tag", chunk=index)
        if progress is not None:
            progress(index * chunk_size + n)
    return result


# -- internals --------------------------------------------------------------------------------


def _file_cipher(
    key: SymmetricKey, salt: bytes, model_id: str, version: int, chunk_size: int
) -> AESGCM:
    raw = derive_key(
        key.to_bytes(),
        salt=salt,
        label="sealserve/model",
        model_id=model_id,
        model_version=version,
        chunk_size=chunk_size,
    )
    return AESGCM(raw)


def _parse_header(header: bytes, expected_version: int) -> tuple[int, bytes]:
    magic, fmt, chunk_size, salt, version = _HEADER.unpack(header)
    if magic != _MAGIC or fmt != _FORMAT:
        _reject("format", format=fmt)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        _reject("chunk_size", chunk_size=chunk_size)
    if version != expected_version:  # also bound by the key and the tags: this is early
        _reject("model_version", model_version=version, expected=expected_version)
    return chunk_size, salt


def _layout(sealed_len: int, chunk_size: int) -> tuple[int, int]:
    """(plaintext length, chunk count) of a sealed model of ``sealed_len`` bytes."""
    body = sealed_len - _HEADER.size
    segment = chunk_size + _TAG
    if body < _TAG or sealed_len > sealed_model_size(MAX_MODEL_BYTES, chunk_size=chunk_size):
        _reject("length", length=sealed_len)
    chunks = -(-body // segment)
    last_len = body - (chunks - 1) * segment - _TAG
    if last_len < 0 or (last_len == 0 and chunks > 1):
        _reject("length", length=sealed_len)
    return (chunks - 1) * chunk_size + last_len, chunks


def _output(plain_len: int, out: Buffer | None) -> tuple[bytearray | memoryview, memoryview]:
    if out is None:
        buffer = bytearray(plain_len)
        return buffer, memoryview(buffer)
    target = as_bytes_view(out, "out")
    if target.readonly:
        raise TypeError("out must be a writable buffer")
    if len(target) < plain_len:
        raise ValueError(f"out has {len(target)} bytes; the model needs {plain_len}")
    return target[:plain_len], target[:plain_len]


def _read_full(src: BinaryIO, buf: bytearray | memoryview) -> int:
    """Fill ``buf`` from ``src`` unless the stream ends first; the number of bytes read.

    Uses ``readinto`` (no copy) when the stream has it, else ``read``.
    """
    view = memoryview(buf)
    readinto = getattr(src, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            chunk = src.read(len(view) - got)
            n = len(chunk) if chunk else 0
            view[got : got + n] = chunk[:n] if chunk else b""
        if not n:
            break
        got += n
    return got


def _write_all(dst: BinaryIO, data: bytes | memoryview) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = dst.write(view[done:])
        if n is None:  # a non-blocking raw stream that would block
            raise OSError("dst is non-blocking and not ready; seal_model needs a blocking stream")
        done += n
    return done


def _remaining(src: BinaryIO) -> int:
    try:
        here = src.tell()
        end = src.seek(0, os.SEEK_END)
        src.seek(here, os.SEEK_SET)
    except (OSError, AttributeError, ValueError) as exc:
        raise ValueError("src is not seekable: pass size= (the sealed length)") from exc
    return end - here


def _reject(reason: str, **detail: int) -> NoReturn:
    _log.event("model.rejected", level=logging.DEBUG, reason=reason, **detail)
    raise InvalidEnvelope()


def _check_key(key: object) -> None:
    if not isinstance(key, SymmetricKey):
        raise TypeError(f"key must be a SymmetricKey, got {type(key).__name__}")


def _check_model_id(model_id: object) -> None:
    if not isinstance(model_id, str) or not model_id or len(model_id) > 1024:
        raise ValueError(
            f"model_id must be a non-empty string of at most 1024 characters, got {model_id!r}"
        )


def _check_version(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, got {type(version).__name__}")
    if not 1 <= version <= MAX_MODEL_VERSION:
        raise ValueError(f"version must be within [1, {MAX_MODEL_VERSION}], got {version!r}")


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk_size must be within [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}], got {chunk_size!r}"
        )
