"""Envelopes: AES-256-GCM with a random nonce, a versioned header and a bound context.

Layout (all integers big-endian)::

    offset  size  field
    0       1     version              0x01
    1       1     suite                0x01 = AES-256-GCM, 96-bit random nonce
    2       8     sealed_at            u64, Unix seconds when sealed
    10      12    nonce                random
    22      n+16  ciphertext and tag

The associated data is ``b"sealserve/envelope\\0" + bytes[0:10] + canonical_encode(context)``,
so the header and every entry of the context are authenticated; the context itself is not
carried, both sides supply it.  Every failure of :func:`unseal` is the same
:class:`~sealserve.errors.InvalidEnvelope`; the reason is logged at DEBUG.

A key may seal at most 2**32 envelopes (NIST SP 800-38D's limit for random 96-bit nonces);
sealserve's keys are per (model, user, policy) and far below it.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag

from sealserve._clock import SYSTEM_CLOCK, Clock
from sealserve._log import get_logger
from sealserve.crypto._buffers import Buffer, as_bytes_view, fill_new_bytes, zero
from sealserve.crypto._canonical import MAX_KEY_BYTES
from sealserve.crypto._keys import SymmetricKey
from sealserve.errors import InvalidEnvelope

__all__ = [
    "ENVELOPE_OVERHEAD",
    "MAX_PLAINTEXT_BYTES",
    "seal",
    "seal_into",
    "sealed_size",
    "unseal",
    "unseal_into",
    "unsealed_size",
]

_VERSION: Final = 1
_SUITE_AES256GCM: Final = 1
_HEADER = struct.Struct(">BBQ")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_MAX_CONTEXT_ENTRIES: Final = 256
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_PREFIX: Final = _HEADER.size + _NONCE_BYTES
_AAD_LABEL: Final = b"sealserve/envelope\x00"
#: Future timestamps within this many seconds are accepted when an age is checked.
_CLOCK_SKEW_S: Final = 60.0
#: Up to this size, seal() assembles the envelope by concatenation (cheaper than in place).
_SMALL_ENVELOPE: Final = 64 * 1024

#: Bytes an envelope adds to its plaintext.
ENVELOPE_OVERHEAD: Final = _PREFIX + _TAG_BYTES
#: Largest plaintext :func:`seal` accepts (1 GiB); larger data is a model: use ``seal_model``.
MAX_PLAINTEXT_BYTES: Final = 1 << 30
_MAX_ENVELOPE: Final = MAX_PLAINTEXT_BYTES + ENVELOPE_OVERHEAD

_log = get_logger(__name__)


def sealed_size(plaintext_len: int) -> int:
    """Size of the envelope of a ``plaintext_len``-byte plaintext."""
    if not 0 <= plaintext_len <= MAX_PLAINTEXT_BYTES:
        raise ValueError(
            f"plaintext_len must be within [0, {MAX_PLAINTEXT_BYTES}], got {plaintext_len!r}"
        )
    return plaintext_len + ENVELOPE_OVERHEAD


def unsealed_size(envelope_len: int) -> int:
    """Size of the plaintext inside an envelope of ``envelope_len`` bytes."""
    if not ENVELOPE_OVERHEAD <= envelope_len <= MAX_PLAINTEXT_BYTES + ENVELOPE_OVERHEAD:
        raise ValueError(f"{envelope_len!r} bytes is not the length of an envelope")
    return envelope_len - ENVELOPE_OVERHEAD


def seal(
    key: SymmetricKey,
    plaintext: Buffer,
    *,
    context: Mapping[str, str],
    clock: Clock = SYSTEM_CLOCK,
) -> bytes:
    """Encrypt and authenticate ``plaintext``, binding ``context`` (which must name a purpose).

    >>> key = SymmetricKey.generate()
    >>> ctx = {"purpose": "example", "request_id": "r1"}
    >>> unseal(key, seal(key, b"hello", context=ctx), context=ctx)
    b'hello'
    """
    return _seal(key, plaintext, context, _timestamp(clock), os.urandom(_NONCE_BYTES))


def _seal(
    key: SymmetricKey, plaintext: Buffer, context: Mapping[str, str], sealed_at: int, nonce: bytes
) -> bytes:
    """:func:`seal` with its timestamp and nonce given: the one place an envelope is built
    whole (``_fixed_nonce`` calls it for the test vectors; nothing else may pass a nonce)."""
    _check_key(key)
    data = as_bytes_view(plaintext, "plaintext")
    size = sealed_size(len(data))
    aad_tail = _encode_context(context)
    header = _HEADER.pack(_VERSION, _SUITE_AES256GCM, sealed_at)
    if size <= _SMALL_ENVELOPE:  # joining small pieces costs less than building in place
        sealed = key._aead.encrypt(nonce, data, _AAD_LABEL + header + aad_tail)
        return b"".join((header, nonce, sealed))

    def fill(out: memoryview) -> None:
        _seal_into(key, data, out, header, aad_tail, nonce)

    return fill_new_bytes(size, fill)


def seal_into(
    key: SymmetricKey,
    plaintext: Buffer,
    out: Buffer,
    *,
    context: Mapping[str, str],
    clock: Clock = SYSTEM_CLOCK,
) -> int:
    """Like :func:`seal`, but write the envelope to the start of ``out`` (e.g. a shared-memory
    loan) and return its length, :func:`sealed_size` of the plaintext's."""
    _check_key(key)
    data = as_bytes_view(plaintext, "plaintext")
    size = sealed_size(len(data))
    target = as_bytes_view(out, "out")
    if target.readonly:
        raise TypeError("out must be a writable buffer")
    if len(target) < size:
        raise ValueError(f"out has {len(target)} bytes; the envelope needs {size}")
    aad_tail = _encode_context(context)
    header = _HEADER.pack(_VERSION, _SUITE_AES256GCM, _timestamp(clock))
    _seal_into(key, data, target[:size], header, aad_tail, os.urandom(_NONCE_BYTES))
    return size


def unseal(
    key: SymmetricKey,
    envelope: Buffer,
    *,
    context: Mapping[str, str],
    max_age_s: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> bytes:
    """The plaintext of ``envelope``, if it was sealed under ``key`` with this ``context``.

    ``envelope`` may be a memoryview (of shared memory, say); nothing is copied before the
    decryption.  With ``max_age_s``, an envelope sealed longer ago than that (by ``clock``)
    is refused too.  Every failure raises the same :class:`~sealserve.errors.InvalidEnvelope`.
    """
    if type(key) is not SymmetricKey:
        _check_key(key)
    aad_tail = _encode_context(context)
    view = as_bytes_view(envelope, "envelope")
    size = len(view)
    if (
        size < ENVELOPE_OVERHEAD
        or size > _MAX_ENVELOPE
        or view[0] != _VERSION
        or view[1] != _SUITE_AES256GCM
    ):
        _split(view)  # rejects, with the reason
    header = view[: _HEADER.size]
    nonce, body = view[_HEADER.size : _PREFIX], view[_PREFIX:]
    aad = _AAD_LABEL + header.tobytes() + aad_tail
    if size <= _SMALL_ENVELOPE:
        try:
            plaintext = key._aead.decrypt(nonce, body, aad)
        except InvalidTag:
            _reject("tag")
    else:  # decrypt straight into the result: no zero-filled buffer, no copy

        def fill(out: memoryview) -> None:
            try:
                key._aead.decrypt_into(nonce, body, aad, out)
            except InvalidTag:
                zero(out)
                _reject("tag")

        plaintext = fill_new_bytes(size - ENVELOPE_OVERHEAD, fill)
    if max_age_s is not None:
        _check_age(header, max_age_s, clock)
    return plaintext


def unseal_into(
    key: SymmetricKey,
    envelope: Buffer,
    out: Buffer,
    *,
    context: Mapping[str, str],
    max_age_s: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> int:
    """Like :func:`unseal`, but write the plaintext to the start of ``out`` and return its
    length.  On failure the bytes of ``out`` that were written are zeroed before raising."""
    _check_key(key)
    aad_tail = _encode_context(context)
    target = as_bytes_view(out, "out")
    if target.readonly:
        raise TypeError("out must be a writable buffer")
    view = as_bytes_view(envelope, "envelope")
    header, nonce, body = _split(view)
    size = len(body) - _TAG_BYTES
    if len(target) < size:
        raise ValueError(f"out has {len(target)} bytes; the plaintext needs {size}")
    window = target[:size]
    try:
        key._aead.decrypt_into(nonce, body, _AAD_LABEL + header.tobytes() + aad_tail, window)
        _check_age(header, max_age_s, clock)
    except InvalidTag:
        zero(window)
        _reject("tag")
    except InvalidEnvelope:
        zero(window)
        raise
    return size


# -- internals --------------------------------------------------------------------------------


def _seal_into(
    key: SymmetricKey,
    data: memoryview,
    out: memoryview,
    header: bytes,
    aad_tail: bytes,
    nonce: bytes,
) -> None:
    out[: _HEADER.size] = header
    out[_HEADER.size : _PREFIX] = nonce
    key._aead.encrypt_into(nonce, data, _AAD_LABEL + header + aad_tail, out[_PREFIX:])


def _split(view: memoryview) -> tuple[memoryview, memoryview, memoryview]:
    size = len(view)
    if size < ENVELOPE_OVERHEAD or size > _MAX_ENVELOPE:
        _reject("length", length=size)
    if view[0] != _VERSION or view[1] != _SUITE_AES256GCM:
        _reject("version", version=view[0], suite=view[1])
    return view[: _HEADER.size], view[_HEADER.size : _PREFIX], view[_PREFIX:]


def _check_age(header: memoryview, max_age_s: float | None, clock: Clock) -> None:
    if max_age_s is None:
        return
    if max_age_s <= 0:
        raise ValueError(f"max_age_s must be > 0, got {max_age_s!r}")
    _, _, sealed_at = _HEADER.unpack(header)
    now = clock.time()
    if not now - max_age_s <= sealed_at <= now + _CLOCK_SKEW_S:
        _reject("age", sealed_at=sealed_at, now=int(now))


def _reject(reason: str, **detail: int) -> NoReturn:
    _log.event("envelope.rejected", level=logging.DEBUG, reason=reason, **detail)
    raise InvalidEnvelope()


def _encode_context(context: Mapping[str, str]) -> bytes:
    """``canonical_encode(context)`` for a mapping of str to str that names a purpose.

    The hot path of every seal and unseal, so validation and encoding are one pass; the
    result is byte for byte what :func:`~sealserve.crypto.canonical_encode` gives (tested).
    """
    if type(context) is not dict and not isinstance(context, Mapping):
        raise TypeError(f"context must be a mapping of str to str, got {type(context).__name__}")
    purpose = context.get("purpose")
    if type(purpose) is not str or not purpose:
        raise ValueError(
            f"context must name a non-empty 'purpose', got {purpose!r}; "
            "e.g. {'purpose': 'inference-input', 'request_id': ...}"
        )
    if len(context) > _MAX_CONTEXT_ENTRIES:
        raise ValueError(f"context has {len(context)} entries; at most {_MAX_CONTEXT_ENTRIES}")
    parts = [_U32.pack(len(context))]
    try:
        names = sorted(context)  # code point order is UTF-8 byte order
    except TypeError:
        raise TypeError("context keys must all be str") from None
    for name in names:
        value = context[name]
        if type(value) is not str and not isinstance(value, str):
            raise TypeError(f"context[{name!r}] must be str, got {type(value).__name__}")
        try:
            name_bytes, value_bytes = name.encode(), value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"context[{name!r}] is not valid Unicode text") from exc
        if not 0 < len(name_bytes) <= MAX_KEY_BYTES:
            raise ValueError(f"context key {name!r} must be 1 to {MAX_KEY_BYTES} UTF-8 bytes long")
        parts += (_U16.pack(len(name_bytes)), name_bytes, b"s", _U32.pack(len(value_bytes)))
        parts.append(value_bytes)
    return b"".join(parts)


def _timestamp(clock: Clock) -> int:
    now = int(clock.time())
    if now < 0:
        raise ValueError(f"clock.time() must not be negative, got {now!r}")
    return now


def _check_key(key: object) -> None:
    if not isinstance(key, SymmetricKey):
        raise TypeError(f"key must be a SymmetricKey, got {type(key).__name__}")
