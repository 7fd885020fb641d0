"""The model store: content addressing, atomic puts, digests checked on every read."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from sealserve._clock import ManualClock
from sealserve.crypto import SymmetricKey, seal_model, unseal_model
from sealserve.errors import ModelNotStored, StoreIntegrityError
from sealserve.instance import MANIFEST_SCHEMA, ModelManifest, ModelStore, WriterState

OWNER = "ab" * 32
MODEL = f"{OWNER}/resnet"


def sealed(
    data: bytes, model_id: str = MODEL, key: SymmetricKey | None = None, version: int = 1
) -> bytes:
    out = io.BytesIO()
    seal_model(
        key or SymmetricKey.generate(),
        io.BytesIO(data),
        out,
        model_id=model_id,
        version=version,
        chunk_size=4096,
    )
    return out.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store", clock=ManualClock(start=1_800_000_000.0))


def test_put_then_read_into_a_buffer_gives_the_same_bytes(store: ModelStore) -> None:
    key = SymmetricKey.generate()
    blob = sealed(os.urandom(50_000), key=key, version=3)
    manifest = store.put(MODEL, io.BytesIO(blob), key_version=3)
    assert manifest.size == len(blob)
    assert manifest.key_version == 3
    assert manifest.chunk_size == 4096
    assert manifest.stored_at == 1_800_000_000.0
    assert store.get(MODEL) == manifest
    out = bytearray(len(blob) + 100)
    assert store.read_into(MODEL, memoryview(out)) == manifest
    assert bytes(out[: len(blob)]) == blob
    assert unseal_model(key, out[: len(blob)], model_id=MODEL, version=3)
    assert store.read(MODEL) == (manifest, blob)
    assert MODEL in store
    assert store.list() == [manifest]
    blob_path = store.root / "blobs" / "sha256" / manifest.digest
    assert blob_path.read_bytes() == blob
    doc = json.loads((store.root / "models" / OWNER / "resnet.json").read_text())
    assert doc["schema"] == MANIFEST_SCHEMA
    assert doc["digest"] == f"sha256:{manifest.digest}"
    assert ModelManifest.from_json(doc) == manifest


def test_a_flipped_byte_is_an_integrity_error_and_nothing_is_served(store: ModelStore) -> None:
    blob = sealed(os.urandom(20_000))
    manifest = store.put(MODEL, blob, key_version=1)
    path = store.root / "blobs" / "sha256" / manifest.digest
    os.chmod(path, 0o644)
    damaged = bytearray(blob)
    damaged[12_345] ^= 0x40
    path.write_bytes(damaged)
    with pytest.raises(StoreIntegrityError, match="does not match its digest"):
        store.read_into(MODEL, memoryview(bytearray(len(blob))))
    with pytest.raises(StoreIntegrityError):
        store.verify(MODEL)
    with pytest.raises(StoreIntegrityError):
        store.read(MODEL)
    path.write_bytes(blob[:-1])  # truncated
    with pytest.raises(StoreIntegrityError, match="size"):
        store.verify(MODEL)
    path.unlink()
    with pytest.raises(StoreIntegrityError, match="missing"):
        store.verify(MODEL)


def test_unknown_models_and_bad_ids(store: ModelStore) -> None:
    with pytest.raises(ModelNotStored, match="no model"):
        store.get(MODEL)
    assert MODEL not in store
    assert store.list() == []
    for bad in ("resnet", f"{OWNER}/../x", "zz/resnet", f"{OWNER}/a/b"):
        with pytest.raises(ValueError, match=r"model|owner_id"):
            store.put(bad, sealed(b"x"), key_version=1)


def test_only_sealed_models_are_stored(store: ModelStore) -> None:
    for data in (b"", b"plain onnx bytes, not sealed" * 10):
        with pytest.raises(ValueError, match="not a sealed model"):
            store.put(MODEL, data, key_version=1)
    with pytest.raises(ValueError, match="key_version"):
        store.put(MODEL, sealed(b"x"), key_version=0)
    assert not list((store.root / "tmp").iterdir())  # nothing half-written is left


def test_a_new_version_replaces_the_old_and_its_blob_goes(store: ModelStore) -> None:
    first = store.put(MODEL, sealed(b"one" * 1000), key_version=1)
    second = store.put(MODEL, sealed(b"two" * 1000, version=2), key_version=2)
    assert store.get(MODEL) == second
    assert not (store.root / "blobs" / "sha256" / first.digest).exists()
    other = f"{OWNER}/copy"
    same = sealed(b"three" * 100, version=3)
    a = store.put(MODEL, same, key_version=3)
    b = store.put(other, same, key_version=3)
    assert a.digest == b.digest  # content addressed: one blob
    assert store.remove(MODEL)
    assert (store.root / "blobs" / "sha256" / a.digest).exists()  # still used by the copy
    assert store.remove(other)
    assert not (store.root / "blobs" / "sha256" / a.digest).exists()
    assert not store.remove(other)


def test_a_damaged_manifest_is_an_integrity_error_and_skipped_in_listings(
    store: ModelStore,
) -> None:
    store.put(MODEL, sealed(b"m" * 100), key_version=1)
    other = f"{OWNER}/other"
    store.put(other, sealed(b"o" * 100), key_version=1)
    (store.root / "models" / OWNER / "resnet.json").write_text("{not json")
    with pytest.raises(StoreIntegrityError, match="damaged"):
        store.get(MODEL)
    assert [m.model_id for m in store.list()] == [other]


def test_streaming_put_reports_progress_and_accepts_readers_without_readinto(
    store: ModelStore,
) -> None:
    blob = sealed(os.urandom(3 << 20))

    class Reader:
        def __init__(self, data: bytes) -> None:
            self._io = io.BytesIO(data)

        def read(self, n: int) -> bytes:
            return self._io.read(min(n, 100_000))

    seen: list[int] = []
    manifest = store.put(MODEL, Reader(blob), key_version=1, progress=seen.append)  # type: ignore[arg-type]
    assert manifest.size == len(blob)
    assert seen[-1] == len(blob)
    assert seen == sorted(seen)
    assert store.read(MODEL)[1] == blob


def test_seal_straight_into_the_store_and_read_back_through_a_checked_stream(
    store: ModelStore,
) -> None:
    key = SymmetricKey.generate()
    plaintext = os.urandom(100_000)
    with store.create(MODEL, key_version=2) as out:
        seal_model(key, io.BytesIO(plaintext), out, model_id=MODEL, version=2, chunk_size=4096)
    assert out.state is WriterState.COMMITTED
    assert out.manifest == store.get(MODEL)
    with store.open(MODEL) as reader:
        assert reader.manifest.key_version == 2
        sealed_bytes = reader.read()
    assert bytes(unseal_model(key, sealed_bytes, model_id=MODEL, version=2)) == plaintext


def test_a_failed_write_leaves_nothing_and_the_old_model_stays(store: ModelStore) -> None:
    old = store.put(MODEL, sealed(b"old" * 100), key_version=1)
    out = store.create(MODEL, key_version=2)

    def fail_midway() -> None:
        with out:
            out.write(sealed(b"new" * 100)[:50])
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        fail_midway()
    assert out.state is WriterState.ABORTED
    assert store.get(MODEL) == old
    assert not list((store.root / "tmp").iterdir())


def test_a_reader_checks_the_digest_when_it_reaches_the_end(store: ModelStore) -> None:
    blob = sealed(os.urandom(30_000))
    manifest = store.put(MODEL, blob, key_version=1)
    path = store.root / "blobs" / "sha256" / manifest.digest
    path.chmod(0o644)
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    path.write_bytes(damaged)
    with store.open(MODEL) as reader:
        assert len(reader.read(1000)) == 1000  # nothing to compare against yet
        with pytest.raises(StoreIntegrityError, match="digest"):
            reader.read()


def test_a_sealed_model_bound_to_another_version_is_refused(store: ModelStore) -> None:
    """Issue 10, item 4: the store checks the (clear) version a sealed file is bound to
    against the version it is stored as; the runtime checks the authenticated one."""
    with pytest.raises(ValueError, match="bound to version 1, not 2"):
        store.put(MODEL, sealed(b"old" * 100, version=1), key_version=2)
    assert MODEL not in store
