"""Every model store behaves alike: the directory store and object storage through fsspec
(its in-process memory filesystem, and its local filesystem through the object code path)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from sealserve._clock import ManualClock
from sealserve.crypto import SymmetricKey, seal_model, unseal_model
from sealserve.errors import ModelNotStored, StoreIntegrityError
from sealserve.instance import (
    ModelStore,
    ObjectModelStore,
    SealedModelStore,
    open_store,
)

OWNER = "cd" * 32
MODEL = f"{OWNER}/bert"
OTHER = f"{OWNER}/other"
CLOCK = ManualClock(start=1_800_000_000.0)


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


@pytest.fixture(params=["directory", "memory", "file-url"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SealedModelStore]:
    if request.param == "directory":
        yield ModelStore(tmp_path / "store", clock=CLOCK)
        return
    if request.param == "memory":
        name = f"memory://sealserve-test-{uuid.uuid4().hex}"
        store = ObjectModelStore(name, clock=CLOCK, staging=tmp_path / "staging")
        try:
            yield store
        finally:
            store.filesystem.rm(name.removeprefix("memory:/"), recursive=True)
        return
    yield ObjectModelStore(
        f"file://{tmp_path / 'objects'}", clock=CLOCK, staging=tmp_path / "staging"
    )


def test_open_store_picks_the_store_a_location_names(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "dir"), ModelStore)
    assert isinstance(open_store(f"memory://{uuid.uuid4().hex}"), ObjectModelStore)
    assert isinstance(open_store(f"file://{tmp_path}"), ObjectModelStore)
    with pytest.raises(ValueError, match="empty"):
        open_store("")
    with pytest.raises(ValueError, match="cannot open the model store 'nosuch://"):
        open_store("nosuch://x")


def test_put_read_list_and_remove(store: SealedModelStore) -> None:
    key = SymmetricKey.generate()
    blob = sealed(os.urandom(30_000), key=key, version=2)
    manifest = store.put(MODEL, blob, key_version=2)
    assert (manifest.size, manifest.key_version, manifest.chunk_size) == (len(blob), 2, 4096)
    assert manifest.stored_at == 1_800_000_000.0
    assert store.get(MODEL) == manifest
    out = bytearray(len(blob) + 7)
    assert store.read_into(MODEL, memoryview(out)) == manifest
    assert unseal_model(key, out[: len(blob)], model_id=MODEL, version=2)
    assert store.read(MODEL) == (manifest, blob)
    with store.open(MODEL) as reader:
        assert reader.read() == blob
    assert store.verify(MODEL) == manifest
    assert store.list() == [manifest]
    assert store.manifest_stamp(MODEL) is not None
    assert store.remove(MODEL) is True
    assert store.remove(MODEL) is False
    assert store.list() == []
    assert store.manifest_stamp(MODEL) is None
    with pytest.raises(ModelNotStored):
        store.get(MODEL)


def test_a_new_version_replaces_the_old_and_shared_blobs_stay(store: SealedModelStore) -> None:
    first = sealed(os.urandom(9_000))
    store.put(MODEL, first, key_version=1)
    store.put(OTHER, first, key_version=1)  # the same bytes under two ids: one blob
    second = sealed(os.urandom(9_000), version=2)
    replaced = store.put(MODEL, second, key_version=2)
    assert store.read(MODEL) == (replaced, second)
    assert store.read(OTHER)[1] == first  # the shared blob was not dropped
    store.remove(OTHER)
    assert [m.model_id for m in store.list()] == [MODEL]


def test_only_sealed_models_are_stored_and_a_failed_write_keeps_the_old(
    store: SealedModelStore,
) -> None:
    blob = sealed(os.urandom(5_000))
    kept = store.put(MODEL, blob, key_version=1)
    with pytest.raises(ValueError, match="not a sealed model"):
        store.put(MODEL, b"ONNX" + os.urandom(100), key_version=2)
    with pytest.raises(ValueError, match="bound to version 1, not 2"):
        store.put(MODEL, sealed(os.urandom(100)), key_version=2)
    partial = sealed(os.urandom(5_000), version=3)[:1000]

    def fail_midway() -> None:
        with store.create(MODEL, key_version=3) as out:
            out.write(partial)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    assert store.read(MODEL) == (kept, blob)


def test_seal_straight_into_the_store(store: SealedModelStore) -> None:
    key = SymmetricKey.generate()
    plain = os.urandom(12_345)
    seen: list[int] = []
    with store.create(MODEL, key_version=4, progress=seen.append) as out:
        seal_model(key, io.BytesIO(plain), out, model_id=MODEL, version=4)  # type: ignore[arg-type]
    assert out.manifest is not None
    assert seen[-1] == out.manifest.size
    assert unseal_model(key, store.read(MODEL)[1], model_id=MODEL, version=4) == plain


def test_adopt_takes_a_staged_file(store: SealedModelStore, tmp_path: Path) -> None:
    import hashlib

    blob = sealed(os.urandom(20_000), version=5)
    staged = (store.staging_dir() or tmp_path) / "upload.part"
    staged.write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    manifest = store.adopt(MODEL, staged, digest=digest, size=len(blob), key_version=5)
    assert not staged.exists()
    assert (manifest.digest, manifest.key_version) == (digest, 5)
    assert store.read(MODEL) == (manifest, blob)
    bad = tmp_path / "plain.part"
    bad.write_bytes(b"not sealed at all" * 10)
    with pytest.raises(ValueError, match="not a sealed model"):
        store.adopt(MODEL, bad, digest=digest, size=170, key_version=6)
    with pytest.raises(ValueError, match="holds 170 bytes, not 171"):
        store.adopt(MODEL, bad, digest=digest, size=171, key_version=6)
    assert bad.exists()
    assert store.get(MODEL) == manifest


def test_a_damaged_blob_is_never_served(store: SealedModelStore, tmp_path: Path) -> None:
    blob = sealed(os.urandom(8_000))
    manifest = store.put(MODEL, blob, key_version=1)
    damaged = bytearray(blob)
    damaged[100] ^= 1
    if isinstance(store, ModelStore):
        path = store.root / "blobs" / "sha256" / manifest.digest
        os.chmod(path, 0o644)
        path.write_bytes(damaged)
    else:
        assert isinstance(store, ObjectModelStore)
        fs, base = fsspec.core.url_to_fs(store.url)
        fs.pipe_file(f"{base.rstrip('/')}/blobs/sha256/{manifest.digest}", bytes(damaged))
    with pytest.raises(StoreIntegrityError, match="does not match its digest"):
        store.read(MODEL)
    with pytest.raises(StoreIntegrityError):
        store.read_into(MODEL, memoryview(bytearray(len(blob))))
    with pytest.raises(StoreIntegrityError):
        store.verify(MODEL)


def test_the_object_store_sees_its_own_writes_at_once_and_others_within_the_ttl(
    tmp_path: Path,
) -> None:
    url = f"memory://sealserve-ttl-{uuid.uuid4().hex}"
    mine = ObjectModelStore(url, clock=CLOCK, staging=tmp_path, cache_ttl_s=3600.0)
    other = ObjectModelStore(url, clock=CLOCK, staging=tmp_path, cache_ttl_s=3600.0)
    try:
        assert mine.manifest_stamp(MODEL) is None
        other.put(MODEL, sealed(os.urandom(3_000)), key_version=1)
        assert mine.manifest_stamp(MODEL) is None  # cached for the TTL
        assert mine.get(MODEL).key_version == 1  # get always reads afresh
        mine.put(MODEL, sealed(os.urandom(3_000), version=2), key_version=2)
        assert mine.manifest_stamp(MODEL) is not None  # its own write is seen at once
    finally:
        mine.filesystem.rm(url.removeprefix("memory:/"), recursive=True)
