"""``upload_model`` and ``sealserve owner upload`` seal ONNX models only: any other file is
refused in one line that names it, before a byte is sealed or a call is made."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from sealserve.cli import app
from sealserve.client import (
    SealedUpload,
    StoreClient,
    check_onnx_model,
    seal_for_upload,
    send_sealed,
    upload_model,
)
from sealserve.crypto import SymmetricKey
from sealserve.errors import GatewayError, NotFound, UploadRefused
from sealserve.instance import ModelStore
from tests.unit.runtime.graphs import dense_model
from tests.unit.runtime.keyservice import InProcessKeyService


@pytest.fixture
def ks(tmp_path: Path) -> Iterator[InProcessKeyService]:
    harness = InProcessKeyService(tmp_path / "ks")
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def model() -> bytes:
    return dense_model(2)


def _not_models(tmp_path: Path, model: bytes) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.onnx"
    text.write_text("these are my notes, not a model\n")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model[: len(model) // 2])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    return {
        "text": (text, "The model does not have an ir_version set properly."),
        "truncated": (truncated, "Unable to parse proto"),
        "empty": (empty, "The model does not have an ir_version set properly."),
    }


@pytest.mark.parametrize("kind", ["text", "truncated", "empty"])
def test_a_file_that_is_not_an_onnx_model_is_not_uploaded(
    ks: InProcessKeyService, tmp_path: Path, model: bytes, kind: str
) -> None:
    path, reason = _not_models(tmp_path, model)[kind]
    store = ModelStore(tmp_path / "store")
    calls_before = dict(ks.calls)
    with pytest.raises(
        ValueError, match="^" + re.escape(f"'{path}' is not an ONNX model: ")
    ) as caught:
        upload_model(ks.owner, store, "m", path)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)
    assert store.list() == []  # nothing sealed
    with pytest.raises(NotFound):
        ks.owner.model("m")  # no key handed over
    assert dict(ks.calls) == calls_before


def test_a_binary_file_is_checked_and_rewound(
    ks: InProcessKeyService, tmp_path: Path, model: bytes
) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ValueError, match=r"^'BytesIO' is not an ONNX model: "):
        upload_model(ks.owner, store, "m", io.BytesIO(b"x" * 100))
    source = io.BytesIO(b"--" + model)
    source.seek(2)
    receipt = upload_model(ks.owner, store, "m", source)
    assert receipt.plain_bytes == len(model)  # the whole model, from where it was
    assert [m.model_id for m in store.list()] == [ks.owner.model_id("m")]


def test_an_onnx_model_uploads(ks: InProcessKeyService, tmp_path: Path, model: bytes) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    check_onnx_model(path)
    receipt = upload_model(ks.owner, ModelStore(tmp_path / "store"), "m", path)
    assert (receipt.key_version, receipt.plain_bytes) == (1, len(model))


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_the_cli_refuses_it_in_one_line_before_connecting(
    tmp_path: Path, model: bytes, kind: str
) -> None:
    path, reason = _not_models(tmp_path, model)[kind]
    result = CliRunner().invoke(
        app,
        ["owner", "upload", str(path), "--name", "m", "--data-dir", str(tmp_path / "data"),
         "--keyservice", "http://127.0.0.1:9"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: '{path}' is not an ONNX model: "), lines
    assert reason in lines[0]
    assert not (tmp_path / "data" / "store").exists()


def test_a_sealed_upload_cut_midway_resumes_from_its_file_and_puts_the_key_once(
    ks: InProcessKeyService, tmp_path: Path
) -> None:
    from tests.unit.client.test_store_client import Flaky
    from tests.unit.gateway import test_uploads

    path = tmp_path / "big.onnx"
    path.write_bytes(dense_model(3, inputs=1024))
    key = SymmetricKey.generate()
    sealed = seal_for_upload(ks.owner, "m", path, tmp_path / "sealed", key=key)
    assert sealed.key_version == 1
    assert sealed.size == (tmp_path / "sealed").stat().st_size
    assert SealedUpload.from_json(sealed.to_json()) == sealed
    down = [False]
    cut = [True]
    offsets: list[int] = []

    def fail(n: int, request: httpx.Request) -> str | None:
        if down[0]:
            return "before"
        if request.method == "PUT":
            offsets.append(int(request.url.params["offset"]))
            if cut[0] and len(offsets) == 4:  # the link breaks after the fourth chunk
                down[0], cut[0] = True, False
        return None

    transport = Flaky(tmp_path / "gateway", fail)

    def store() -> StoreClient:
        return StoreClient(
            "http://gw", identity=ks.owner.identity, transport=transport, retries=1,
            chunk_bytes=test_uploads.CHUNK, sleep=lambda _s: None, clock=test_uploads.CLOCK,
        )  # fmt: skip

    began: list[str] = []
    with store() as client, pytest.raises(GatewayError, match="unreachable"):
        send_sealed(ks.owner, client, sealed, key=key, on_begin=began.append)
    with pytest.raises(NotFound):
        ks.owner.model("m")  # no key before the model is stored
    held = 4 * test_uploads.CHUNK
    assert offsets == list(range(0, held, test_uploads.CHUNK))
    down[0] = False
    offsets.clear()
    with store() as client:
        receipt = send_sealed(ks.owner, client, sealed, key=key, upload_id=began[0])
    assert offsets[0] == held  # only the chunks the gateway lacked
    assert receipt.digest == sealed.digest == hashlib.sha256(sealed.path.read_bytes()).hexdigest()
    assert (receipt.key_version, receipt.key_fingerprint) == (1, key.fingerprint)
    assert ks.owner.model("m").key_version == 1
    uploads = transport.gateway.uploads
    assert uploads is not None
    assert uploads.store.read(ks.owner.model_id("m"))[1] == sealed.path.read_bytes()


def test_the_cli_resumes_what_a_cut_run_left_and_drops_what_was_refused(
    ks: InProcessKeyService, tmp_path: Path
) -> None:
    from sealserve._cli.owner import _upload_resumably
    from tests.unit.client.test_store_client import Flaky
    from tests.unit.gateway import test_uploads

    data = tmp_path / "data"
    pending = data / "owner" / "uploads" / "m"
    down = [False]
    cut = [True]
    offsets: list[int] = []

    def fail(n: int, request: httpx.Request) -> str | None:
        if down[0]:
            return "before"
        if request.method == "PUT":
            offsets.append(int(request.url.params["offset"]))
            if cut[0] and len(offsets) == 2:  # the link breaks after the second chunk
                down[0], cut[0] = True, False
        return None

    transport = Flaky(tmp_path / "gateway", fail)

    def run(path: Path) -> tuple[object, SymmetricKey, bool]:
        with StoreClient(
            "http://gw", identity=ks.owner.identity, transport=transport, retries=0,
            chunk_bytes=test_uploads.CHUNK, sleep=lambda _s: None, clock=test_uploads.CLOCK,
        ) as client:  # fmt: skip
            return _upload_resumably(  # type: ignore[no-any-return]
                ks.owner, client, "m", path, data, SymmetricKey.generate(), False,
                lambda _done: None, lambda _done, _total: None,
            )  # fmt: skip

    path = tmp_path / "m.onnx"
    path.write_bytes(dense_model(3, inputs=1024))
    with pytest.raises(GatewayError, match="run the same command again"):
        run(path)
    assert (pending / "key").stat().st_mode & 0o077 == 0
    state = json.loads((pending / "state.json").read_text())
    assert state["upload_id"]
    sealed = (pending / "sealed").read_bytes()
    down[0] = False
    offsets.clear()
    receipt, key, resumed = run(path)
    assert resumed
    assert offsets[0] == 2 * test_uploads.CHUNK  # only what the gateway lacked
    assert receipt.digest == hashlib.sha256(sealed).hexdigest()  # type: ignore[attr-defined]
    assert ks.owner.model("m").key_version == 1
    assert key.fingerprint == state["key_fingerprint"]  # the key the first run sealed with
    assert not pending.exists()
    big = tmp_path / "big.onnx"  # over the gateway's limit (1 MiB): refused at the start
    big.write_bytes(dense_model(3, inputs=20_000))
    with pytest.raises(UploadRefused) as info:
        run(big)
    assert info.value.code == "payload_too_large"
    assert not pending.exists()  # a refused upload leaves nothing to resume
    assert ks.owner.model("m").key_version == 1


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--max-dim", "X=abc"], "'abc' is not an int or '-'"),
        (["--max-dim", "X"], "expected INPUT=D0,D1,..."),
        (["--max-dim", "X=-,65"], "dimension 1 of input 'X' is static (64)"),
        (["--max-dim", "Nope=1,64"], "'Nope', which is not an input of the model"),
    ],
)
def test_the_cli_refuses_malformed_input_limits_before_connecting(
    tmp_path: Path, model: bytes, flags: list[str], reason: str
) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    result = CliRunner().invoke(
        app,
        ["owner", "upload", str(path), "--name", "m", "--data-dir", str(tmp_path / "data"),
         "--keyservice", "http://127.0.0.1:9", *flags],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the input limits are refused: "), lines
    assert reason in lines[0]


def test_declared_limits_are_sealed_inside_the_model(
    ks: InProcessKeyService, tmp_path: Path
) -> None:
    import onnx

    from sealserve.crypto import unseal_model
    from tests.unit.runtime.test_input_limits import add_model

    store = ModelStore(tmp_path / "store")
    key = SymmetricKey.generate()
    source = io.BytesIO(add_model())
    upload_model(ks.owner, store, "m", source, key=key, max_batch=3, max_dims={"X": [None, 64]})
    model_id = ks.owner.model_id("m")
    _, sealed = store.read(model_id)
    plain = bytes(unseal_model(key, sealed, model_id=model_id, version=1))
    props = {p.key: p.value for p in onnx.load_from_string(plain).metadata_props}
    assert props == {"sealserve.max_batch": "3", "sealserve.max_dims": '{"X":[null,64]}'}
