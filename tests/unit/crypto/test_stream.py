from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from sealserve.crypto import (
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    SealedModelHeader,
    SymmetricKey,
    seal_model,
    sealed_model_size,
    unseal_model,
    unseal_model_stream,
)
from sealserve.errors import InvalidEnvelope

VECTORS = json.loads((Path(__file__).parent / "vectors" / "crypto_v1.json").read_text())
HEADER = 44
TAG = 16


def _seal(
    key: SymmetricKey,
    data: bytes,
    *,
    chunk_size: int = 64,
    model_id: str = "m",
    version: int = 1,
) -> bytes:
    dst = io.BytesIO()
    n = seal_model(
        key, io.BytesIO(data), dst, model_id=model_id, version=version, chunk_size=chunk_size
    )
    assert n == len(dst.getvalue())
    return dst.getvalue()


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 1000])
def test_round_trip_at_chunk_boundaries(size: int) -> None:
    key = SymmetricKey.generate()
    data = os.urandom(size)
    sealed = _seal(key, data)
    assert len(sealed) == sealed_model_size(size, chunk_size=64)
    assert unseal_model(key, sealed, version=1, model_id="m") == data
    assert unseal_model_stream(key, io.BytesIO(sealed), version=1, model_id="m") == data


def test_known_answer_model_still_unseals() -> None:
    kat = VECTORS["model_v2"]
    key = SymmetricKey.from_bytes(bytes.fromhex(kat["key"]))
    sealed = bytes.fromhex(kat["sealed"])
    plain = bytes.fromhex(kat["plaintext"])
    assert unseal_model(key, sealed, model_id=kat["model_id"], version=3) == plain
    assert SealedModelHeader.parse(sealed[:HEADER]) == SealedModelHeader(
        chunk_size=kat["chunk_size"], model_version=kat["model_version"]
    )


def test_format_1_without_a_version_is_refused() -> None:
    """Format 1 bound no version, so it cannot prove which version it is: refused."""
    kat = VECTORS["model"]
    key = SymmetricKey.from_bytes(bytes.fromhex(kat["key"]))
    sealed = bytes.fromhex(kat["sealed"])
    for version in (1, 2):
        with pytest.raises(InvalidEnvelope):
            unseal_model(key, sealed, model_id=kat["model_id"], version=version)
    with pytest.raises(ValueError, match="format 1"):
        SealedModelHeader.parse(sealed[:HEADER])


def test_a_file_opens_only_for_the_version_it_was_sealed_for() -> None:
    """Issue 10, item 4: an owner who seals version 2 under the key of version 1 (reusing its
    key) cannot have version 1 served in its place: each file binds its version."""
    key = SymmetricKey.generate()
    old, new = os.urandom(200), os.urandom(200)
    sealed_old = _seal(key, old, version=1)
    sealed_new = _seal(key, new, version=2)
    assert unseal_model(key, sealed_new, model_id="m", version=2) == new
    with pytest.raises(InvalidEnvelope):
        unseal_model(key, sealed_old, model_id="m", version=2)
    with pytest.raises(InvalidEnvelope):
        unseal_model_stream(key, io.BytesIO(sealed_old), model_id="m", version=2)
    # The version in the clear header is bound too: rewriting it does not help.
    forged = sealed_old[: HEADER - 4] + (2).to_bytes(4, "big") + sealed_old[HEADER:]
    assert SealedModelHeader.parse(forged[:HEADER]).model_version == 2
    with pytest.raises(InvalidEnvelope):
        unseal_model(key, forged, model_id="m", version=2)


def test_default_chunk_size_is_one_mebibyte() -> None:
    key = SymmetricKey.generate()
    data = os.urandom(MAX_CHUNK_SIZE + 10)
    sealed = _seal(key, data, chunk_size=MAX_CHUNK_SIZE)
    assert len(sealed) == HEADER + len(data) + 2 * TAG
    assert unseal_model(key, memoryview(sealed), version=1, model_id="m") == data


def test_unseal_into_a_caller_buffer() -> None:
    key = SymmetricKey.generate()
    data = os.urandom(300)
    sealed = _seal(key, data)
    out = bytearray(400)
    view = unseal_model(key, sealed, version=1, model_id="m", out=out)
    assert isinstance(view, memoryview)
    assert bytes(view) == data
    assert out[:300] == data
    with pytest.raises(ValueError, match="needs 300"):
        unseal_model(key, sealed, version=1, model_id="m", out=bytearray(299))


def test_stream_reads_from_the_current_position_or_an_explicit_size() -> None:
    key = SymmetricKey.generate()
    data = os.urandom(200)
    sealed = _seal(key, data)
    src = io.BytesIO(b"prefix" + sealed)
    src.seek(6)
    assert unseal_model_stream(key, src, version=1, model_id="m") == data
    src = io.BytesIO(sealed + b"trailing")
    assert unseal_model_stream(key, src, version=1, model_id="m", size=len(sealed)) == data


def test_progress_is_reported_in_plaintext_bytes() -> None:
    key = SymmetricKey.generate()
    data = os.urandom(150)
    seen: list[int] = []
    dst = io.BytesIO()
    seal_model(
        key, io.BytesIO(data), dst, version=1, model_id="m", chunk_size=64, progress=seen.append
    )
    assert seen == [64, 128, 150]
    seen.clear()
    unseal_model_stream(
        key, io.BytesIO(dst.getvalue()), model_id="m", version=1, progress=seen.append
    )
    assert seen == [64, 128, 150]


class _Trickle(io.RawIOBase):
    """A stream that returns at most 7 bytes per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(7, len(buf)))
        buf[: len(chunk)] = chunk
        return len(chunk)


def test_short_reads_are_completed() -> None:
    key = SymmetricKey.generate()
    data = os.urandom(500)
    dst = io.BytesIO()
    seal_model(key, _Trickle(data), dst, version=1, model_id="m", chunk_size=64)  # type: ignore[arg-type]
    sealed = dst.getvalue()
    assert unseal_model(key, sealed, version=1, model_id="m") == data
    trickle = _Trickle(sealed)
    got = unseal_model_stream(key, trickle, version=1, model_id="m", size=len(sealed))  # type: ignore[arg-type]
    assert got == data


def test_wrong_key_or_model_id_fails() -> None:
    key = SymmetricKey.generate()
    sealed = _seal(key, b"weights" * 30, model_id="resnet")
    with pytest.raises(InvalidEnvelope):
        unseal_model(SymmetricKey.generate(), sealed, version=1, model_id="resnet")
    with pytest.raises(InvalidEnvelope):
        unseal_model(key, sealed, version=1, model_id="bert")


def _chunks(sealed: bytes, chunk_size: int = 64) -> tuple[bytes, list[bytes]]:
    body = sealed[HEADER:]
    step = chunk_size + TAG
    return sealed[:HEADER], [body[i : i + step] for i in range(0, len(body), step)]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda h, c: h + b"".join(c[:-1]), id="drop-last-chunk"),
        pytest.param(lambda h, c: h + b"".join([c[1], c[0], *c[2:]]), id="swap-chunks"),
        pytest.param(lambda h, c: h + b"".join([c[0], *c]), id="duplicate-chunk"),
        pytest.param(lambda h, c: h + b"".join([*c, c[-1]]), id="repeat-last"),
        pytest.param(lambda h, c: h + b"".join(c) + b"\x00", id="one-byte-more"),
        pytest.param(lambda h, c: h + b"".join(c)[:-1], id="one-byte-less"),
        pytest.param(lambda h, c: h, id="header-only"),
        pytest.param(lambda h, c: h[:10], id="short-header"),
        pytest.param(lambda h, c: b"XSM" + h[3:] + b"".join(c), id="magic"),
        pytest.param(lambda h, c: h[:3] + b"\x03" + h[4:] + b"".join(c), id="format"),
        pytest.param(lambda h, c: h[:3] + b"\x01" + h[4:-4] + b"".join(c), id="format-1"),
        pytest.param(lambda h, c: h[:4] + (32).to_bytes(4) + h[8:] + b"".join(c), id="chunk-size"),
        pytest.param(lambda h, c: h[:10] + bytes([h[10] ^ 1]) + h[11:] + b"".join(c), id="salt"),
        pytest.param(lambda h, c: h[:-1] + bytes([h[-1] ^ 3]) + b"".join(c), id="model-version"),
    ],
)
def test_structural_attacks_fail_alike(edit: object) -> None:
    key = SymmetricKey.generate()
    header, chunks = _chunks(_seal(key, os.urandom(64 * 3 + 10)))
    tampered = edit(header, chunks)  # type: ignore[operator]
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unseal_model(key, tampered, version=1, model_id="m")
    with pytest.raises(InvalidEnvelope, match=r"^invalid envelope$"):
        unseal_model_stream(key, io.BytesIO(tampered), version=1, model_id="m")


def test_chunks_from_another_file_of_the_same_model_are_refused() -> None:
    key = SymmetricKey.generate()
    data = os.urandom(200)
    header_a, chunks_a = _chunks(_seal(key, data))
    _, chunks_b = _chunks(_seal(key, data))
    with pytest.raises(InvalidEnvelope):
        unseal_model(key, header_a + chunks_a[0] + b"".join(chunks_b[1:]), version=1, model_id="m")


def test_output_is_zeroed_when_a_later_chunk_fails() -> None:
    key = SymmetricKey.generate()
    sealed = bytearray(_seal(key, b"\xaa" * 200))
    sealed[-1] ^= 1
    out = bytearray(200)
    with pytest.raises(InvalidEnvelope):
        unseal_model(key, sealed, version=1, model_id="m", out=out)
    assert out == bytes(200)


@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 0])
def test_chunk_size_is_bounded(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        _seal(SymmetricKey.generate(), b"x", chunk_size=chunk_size)


def test_model_id_is_required() -> None:
    with pytest.raises(ValueError, match="model_id"):
        _seal(SymmetricKey.generate(), b"x", model_id="")


def test_unseekable_stream_needs_a_size() -> None:
    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError, match="size="):
        unseal_model_stream(SymmetricKey.generate(), Pipe(), version=1, model_id="m")  # type: ignore[arg-type]


def test_streams_without_readinto_are_read_with_read() -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._data.read(min(n, 5))

    key = SymmetricKey.generate()
    data = os.urandom(333)
    dst = io.BytesIO()
    seal_model(key, ReadOnly(data), dst, version=1, model_id="m", chunk_size=64)  # type: ignore[arg-type]
    sealed = dst.getvalue()
    got = unseal_model_stream(key, ReadOnly(sealed), version=1, model_id="m", size=len(sealed))  # type: ignore[arg-type]
    assert got == data
