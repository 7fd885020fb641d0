"""The whole release flow and a sealed inference with SGX enclaves under Gramine, issue 12.

The KeyService and the runtime each run in an enclave of their own, started by the
``GramineLauncher`` (``--gramine`` for ``sealserve instance serve``) from manifests that
``sealserve attest gramine-manifest`` wrote, "signed" and run by a stand-in for gramine-sgx
(tests/hwfakes/gramine_sgx.py): MRENCLAVE over the manifest and the snapshot's files, the
manifest's argv and environment only, ``/dev/attestation`` served in the enclave's process,
its SGX quotes (v3, the real layout) signed by a test Intel DCAP hierarchy generated here
(tests/hwfakes/dcap.py).  The KeyService's and the runtime's manifests fix launch configs that
trust that test root (``dcap_root``), in this test only; the runtime's pins the KeyService's
MRENCLAVE; owner and user pin the KeyService's MRENCLAVE and grant the runtime's.  The runtime
inherits no descriptor: it connects to the named socket its instance host listens on.

What the stand-in does not do as Gramine does: it enforces no trusted or allowed files (the
KeyService writes its SQLite file; under Gramine it would use PostgreSQL over TCP), and a named
Unix socket reaches the host, which Gramine's do not (docs/deploy-sgx-gramine.md).

Denials, each the fixed 403: a debug enclave of the same runtime, a platform whose collateral
says its TCB is out of date, and a grant for the runtime of another snapshot.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from sealserve._lifeline import tie_to_this_process
from sealserve.attest import Policy, TrustAnchors
from sealserve.attest.tee import GramineLauncher
from sealserve.bench._runtime_stack import InstanceProcess, infer_tensors
from sealserve.cli import app
from sealserve.client import KeyServicePin, Owner, User
from sealserve.config import KeyServiceSettings
from sealserve.crypto import Identity, RequestKey, SymmetricKey, seal_model
from sealserve.ecall import runtime_launch_config
from sealserve.errors import AccessDenied, KeyServiceError
from sealserve.instance import ModelStore
from sealserve.keyservice import measured_config
from sealserve.keyservice._launch import LaunchedKeyService, launch_keyservice
from tests.hwfakes import gramine_sgx
from tests.hwfakes.dcap import DcapHierarchy, DcapPlatform
from tests.unit.runtime.graphs import dense_model, plain_run

FAKE = Path(gramine_sgx.__file__).resolve()


class Enclaves:
    """The SGX machine: its DCAP platform, its manifests and what they measure."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hierarchy = DcapHierarchy()
        self.platform: DcapPlatform = self.hierarchy.platform()
        self.platform_file = root / "sgx-platform.json"
        self.platform_file.write_text(self.platform.to_json())
        self.cpu_secret = secrets.token_hex(32)
        self.dcap_root = root / "dcap-root.pem"
        self.dcap_root.write_bytes(self.hierarchy.root.public_bytes(Encoding.PEM))
        self.snapshot = root / "snapshot"
        self.manifests = root / "manifests"
        self.collateral = {e: root / f"{e}-collateral.json" for e in ("keyservice", "runtime")}
        for path in self.collateral.values():
            path.write_bytes(self.platform.collateral_json("SGX"))
        self.settings = KeyServiceSettings(
            port=0,
            db_url=f"sqlite+pysqlite:///{root / 'keyservice.db'}",
            rate_limit_per_s=1e4,
            rate_limit_burst=10_000,
            dcap_root=self.dcap_root,
        )
        self.keyservice = self.sign("keyservice", measured_config(self.settings))
        self.trust = TrustAnchors(dcap_root_ca_der=self.hierarchy.root_der)
        self.keyservice_pin = Policy(measurements=frozenset({self.keyservice}))
        self.runtime_config = runtime_launch_config(
            keyservice_policy=self.keyservice_pin, trust=self.trust
        )
        self.runtime = self.sign("runtime", self.runtime_config)

    def template(self, entry: str, config: dict[str, str], *, snapshot: Path) -> str:
        """``sealserve attest gramine-manifest`` for ``entry``."""
        args = [
            "attest", "gramine-manifest", "--entry", entry, "--snapshot", str(snapshot),
            "--collateral", str(self.collateral[entry]),
            *(x for key, value in config.items() for x in ("--config", f"{key}={value}")),
        ]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return result.output

    def sign(
        self,
        entry: str,
        config: dict[str, str],
        *,
        out: Path | None = None,
        snapshot: Path | None = None,
        debug: bool = False,
    ) -> str:
        text = self.template(entry, config, snapshot=snapshot or self.snapshot)
        return gramine_sgx.sign(text, out or self.manifests, entry, debug=debug)

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-B", str(FAKE),
            "--platform", str(self.platform_file), "--cpu-secret", self.cpu_secret,
        ]  # fmt: skip


@pytest.fixture(scope="module")
def sgx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Enclaves, LaunchedKeyService]]:
    root = tmp_path_factory.mktemp("sgx")
    enclaves = Enclaves(root)
    launcher = GramineLauncher(enclaves.manifests, command=enclaves.command)
    log = os.open(root / "keyservice.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        service = launch_keyservice(
            launcher, enclaves.settings, data_dir=root / "ks", log_level="INFO", stderr=log
        )
    except KeyServiceError as exc:  # its log says why: show it, not just its path
        text = (root / "keyservice.log").read_text(errors="replace")
        pytest.fail(f"{exc}\n--- keyservice.log ---\n{text}")
    finally:
        os.close(log)
    try:
        assert service.measurement == enclaves.keyservice
        yield enclaves, service
    finally:
        service.stop()


def _publish(enclaves: Enclaves, url: str, runtime: str, name: str) -> tuple[str, str, RequestKey]:
    """Owner and user: a sealed model in the store, its key, a grant for ``runtime``."""
    pin = KeyServicePin(policy=enclaves.keyservice_pin, trust=enclaves.trust)
    owner = Owner(Identity.generate(), keyservice_url=url, pin=pin)
    user = User(Identity.generate(), keyservice_url=url, pin=pin)
    policy = Policy(measurements=frozenset({runtime}))
    store = ModelStore(enclaves.root / "store")
    with owner, user:
        owner.register()
        user.register()
        model_id = owner.model_id(name)
        key = SymmetricKey.generate()
        sealed = io.BytesIO()
        seal_model(key, io.BytesIO(dense_model(64)), sealed, model_id=model_id, version=1)
        store.put(model_id, sealed.getbuffer(), key_version=1)
        owner.put_model_key(name, key, version=1)
        owner.grant(name, user.principal_id, policy)
        request_key = RequestKey.generate()
        user.put_request_key(model_id, request_key, policy)
        return user.principal_id, model_id, request_key


@contextlib.contextmanager
def _instance(
    enclaves: Enclaves, url: str, manifests: Path, name: str
) -> Iterator[InstanceProcess]:
    ready_file = enclaves.root / f"{name}.ready"
    log_path = enclaves.root / f"{name}.log"
    (enclaves.root / "store").mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "sealserve", "instance", "serve",
        "--store", str(enclaves.root / "store"), "--keyservice", url, "--port", "0",
        "--data-dir", str(enclaves.root / "host"),
        "--gramine", str(manifests), "--gramine-command", " ".join(enclaves.command),
        "--ready-file", str(ready_file), "--log-level", "INFO",
    ]  # fmt: skip
    env = dict(os.environ)
    lifeline = tie_to_this_process(env)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            command, stdout=log, stderr=log, env=env, pass_fds=(lifeline,), start_new_session=True
        )
    deadline = time.monotonic() + 90
    while not ready_file.exists():
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            popen.wait(10)
            raise AssertionError(log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.05)
    with InstanceProcess(popen, json.loads(ready_file.read_text()), log_path) as instance:
        yield instance


def _infer(instance: InstanceProcess, user_id: str, model_id: str, key: RequestKey) -> None:
    inputs = {"X": np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)}
    outputs, _ = infer_tensors(instance.client, key, inputs, model_id=model_id, user_id=user_id)
    expected = plain_run(dense_model(64), inputs)["Y"]
    np.testing.assert_allclose(outputs["Y"], expected, rtol=1e-5, atol=1e-5)


def test_keys_are_released_to_the_enclave_and_a_sealed_inference_answered(
    sgx: tuple[Enclaves, LaunchedKeyService],
) -> None:
    enclaves, service = sgx
    user_id, model_id, key = _publish(enclaves, service.url, enclaves.runtime, "dense")
    with _instance(enclaves, service.url, enclaves.manifests, "good") as instance:
        _infer(instance, user_id, model_id, key)
        log = instance.logs()
    # the runtime connected to the named socket of its host: an enclave inherits no descriptor
    assert '"event":"supervisor.runtime_connected"' in log
    assert '"via":"named"' in log


def test_a_debug_enclave_gets_the_fixed_denial(sgx: tuple[Enclaves, LaunchedKeyService]) -> None:
    enclaves, service = sgx
    debug_dir = enclaves.root / "manifests-debug"
    # the same runtime signed as a debug enclave: the same MRENCLAVE, quotes that say DEBUG
    assert enclaves.sign("runtime", enclaves.runtime_config, out=debug_dir, debug=True) == (
        enclaves.runtime
    )
    user_id, model_id, key = _publish(enclaves, service.url, enclaves.runtime, "dense-debug")
    with (
        _instance(enclaves, service.url, debug_dir, "debug") as instance,
        pytest.raises(AccessDenied),
    ):
        _infer(instance, user_id, model_id, key)


def test_an_out_of_date_platform_gets_the_fixed_denial(
    sgx: tuple[Enclaves, LaunchedKeyService],
) -> None:
    enclaves, service = sgx
    user_id, model_id, key = _publish(enclaves, service.url, enclaves.runtime, "dense-tcb")
    path = enclaves.collateral["runtime"]
    good = path.read_bytes()
    # the host refreshes the runtime's collateral: Intel now rates this platform out of date
    path.write_bytes(enclaves.platform.collateral_json("SGX", outdated=True))
    try:
        with (
            _instance(enclaves, service.url, enclaves.manifests, "outdated") as instance,
            pytest.raises(AccessDenied),
        ):
            _infer(instance, user_id, model_id, key)
    finally:
        path.write_bytes(good)


def test_a_runtime_of_another_snapshot_gets_the_fixed_denial(
    sgx: tuple[Enclaves, LaunchedKeyService],
) -> None:
    enclaves, service = sgx
    other = enclaves.root / "snapshot-other"
    shutil.copytree(enclaves.snapshot, other)
    main = other / "sealserve" / "runtime" / "_main.py"
    main.chmod(0o644)
    main.write_text(main.read_text() + "\n# another build\n")
    elsewhere = enclaves.sign(
        "runtime", enclaves.runtime_config, out=enclaves.root / "m-other", snapshot=other
    )
    assert elsewhere != enclaves.runtime
    user_id, model_id, key = _publish(enclaves, service.url, elsewhere, "dense-other")
    with (
        _instance(enclaves, service.url, enclaves.manifests, "other") as instance,
        pytest.raises(AccessDenied),
    ):
        _infer(instance, user_id, model_id, key)
