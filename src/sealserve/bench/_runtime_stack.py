"""A whole local sealserve stack for the runtime benchmark (and the integration tests).

One simulated TEE platform, served by a platform daemon on a Unix socket; a KeyService it
launched (SQLite in the stack's directory); an owner and a user registered with it; a model
store; and instance hosts (``sealserve instance serve`` subprocesses) whose runtimes the
daemon launches::

    with LocalStack(root) as stack:
        model = stack.add_model("mobilenet", onnx_path)       # seal, store, key, grant
        with stack.start_instance() as inst:                  # a real host + runtime
            outputs, timings = infer_tensors(inst.client, model.request_key, inputs, ...)

Every pin is computed from the platform's own code snapshot, so files edited while the stack
runs cannot make a pin and the launched code disagree.

With a hardware ``backend`` (a TPM, configfs-tsm) the platform is a measured launcher instead
of a simulated signer: ``trust`` holds the hardware roots every verifier trusts (travelling in
the KeyService's and the runtimes' measured launch configs) and ``reference_values`` the
platform part every policy pins, beside the sealserve measurements.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sealserve._lifeline import tie_to_this_process
from sealserve.attest import Policy, ReferenceValues, SnpAnchors, TrustAnchors
from sealserve.attest._backends import LaunchBackend
from sealserve.attest.tee import MeasuredProcess, PlatformServer, SimulatedPlatform
from sealserve.client import KeyServicePin, Owner, User
from sealserve.config import KeyServiceSettings
from sealserve.crypto import Identity, RequestKey, SymmetricKey, seal_model
from sealserve.ecall import runtime_launch_config
from sealserve.errors import SealserveError
from sealserve.instance import InstanceClient, ModelStore
from sealserve.keyservice._launch import read_ready_line
from sealserve.protocol import new_request_id, seal_input, unseal_output

__all__ = ["InstanceProcess", "LocalStack", "StackModel", "infer_tensors"]


def _pem(certificate: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if certificate.lstrip().startswith(b"-----BEGIN"):
        return certificate if certificate.endswith(b"\n") else certificate + b"\n"
    return x509.load_der_x509_certificate(certificate).public_bytes(Encoding.PEM)


_READY_TIMEOUT_S: Final = 90.0


def infer_tensors(
    client: InstanceClient,
    key: RequestKey,
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    model_id: str,
    user_id: str,
    request_id: str | None = None,
    timeout_s: float | None = None,
) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, float]]:
    """The user's whole side against one instance: seal ``inputs``, send them with
    ``client``, unseal the outputs; the outputs and the stage timings."""
    rid = request_id or new_request_id()
    sealed = seal_input(key, inputs, model_id=model_id, user_id=user_id, request_id=rid)
    result = client.infer(
        model_id=model_id,
        user_id=user_id,
        request_id=rid,
        sealed_input=sealed,
        timeout_s=timeout_s,
    )
    outputs = unseal_output(
        key, result.sealed_output, model_id=model_id, user_id=user_id, request_id=rid
    )
    return outputs, result.timings


@dataclasses.dataclass(frozen=True, slots=True)
class StackModel:
    """A model the stack's owner sealed, stored and granted to the stack's user."""

    name: str
    model_id: str
    request_key: RequestKey
    model_key: SymmetricKey
    sealed_bytes: int


class InstanceProcess:
    """A running ``sealserve instance serve`` and a client of it; a context manager."""

    def __init__(
        self, popen: subprocess.Popen[bytes], ready: Mapping[str, Any], log_path: Path
    ) -> None:
        self.popen = popen
        self.ready = dict(ready)
        self.url = str(ready["url"])
        self.log_path = log_path
        self.client = InstanceClient(self.url, control_token=ready.get("control_token")).open()

    @property
    def runtime_pid(self) -> int:
        return int(self.ready["runtime_pid"])

    def stop(self, *, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; the exit status."""
        self.client.close()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> InstanceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalStack:
    """Platform daemon, KeyService, owner, user and model store (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        keyservice_settings: KeyServiceSettings | None = None,
        log_level: str = "WARNING",
        backend: LaunchBackend | None = None,
        trust: TrustAnchors | None = None,
        reference_values: tuple[ReferenceValues, ...] = (),
        package_dir: Path | None = None,
        keyservice_join: str | None = None,
    ) -> None:
        if backend is not None and (trust is None or not reference_values):
            raise ValueError("a hardware backend needs its trust anchors and reference values")
        self.root = Path(root)
        self.backend = backend
        self.hardware_trust = trust
        self.reference_values = tuple(reference_values)
        self.package_dir = package_dir
        root_settings = ("tpm_roots", "dcap_root", "snp_ark_pins")
        if (
            trust is not None
            and keyservice_settings is not None
            and any(
                getattr(keyservice_settings, r) != getattr(KeyServiceSettings(), r)
                for r in root_settings
            )
        ):
            raise ValueError("give the hardware roots in trust, not in keyservice_settings")
        if trust is not None:
            # The KeyService trusts the hardware roots through its measured launch config.
            changes: dict[str, Any] = {}
            if trust.tpm is not None:
                self.root.mkdir(parents=True, exist_ok=True)
                roots = self.root / "tpm-roots.pem"
                roots.write_bytes(b"".join(_pem(r) for r in trust.tpm.roots))
                changes["tpm_roots"] = roots
            if trust.dcap_root_ca_der is not None:
                self.root.mkdir(parents=True, exist_ok=True)
                dcap_root = self.root / "dcap-root.pem"
                dcap_root.write_bytes(_pem(trust.dcap_root_ca_der))
                changes["dcap_root"] = dcap_root
            if trust.snp is not None and trust.snp != SnpAnchors():
                pins = sorted(trust.snp.ark_pins.items())
                changes["snp_ark_pins"] = ",".join(f"{k}={v}" for k, v in pins)
            keyservice_settings = dataclasses.replace(
                keyservice_settings or KeyServiceSettings(), **changes
            )
        self.log_level = log_level
        #: A running KeyService of the same measurement the stack's joins (attested master-key
        #: transfer) instead of creating or unsealing the master key; may be set before open.
        self.keyservice_join = keyservice_join
        self.keyservice_settings = keyservice_settings or KeyServiceSettings()
        self._socket_dir = Path(tempfile.mkdtemp(prefix="ss-"))
        self.socket_path = self._socket_dir / "tee.sock"
        self.platform: SimulatedPlatform | None = None
        self._server: PlatformServer | None = None
        self._keyservice: MeasuredProcess | None = None
        self.keyservice_url = ""
        self.owner: Owner | None = None
        self.user: User | None = None
        self.store = ModelStore(self.root / "store")
        self._instances: list[InstanceProcess] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> LocalStack:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "store").mkdir(exist_ok=True)
        try:
            self.platform = SimulatedPlatform(
                data_dir=self.root / "platform", backend=self.backend, package_dir=self.package_dir
            ).open()
            if self.backend is None:
                self.platform_key_file.write_text(self.platform.public_key_bytes.hex() + "\n")
            self._server = PlatformServer(self.platform, socket_path=self.socket_path).open()
            self._start_keyservice()
            pin = KeyServicePin(policy=self.keyservice_policy, trust=self.trust)
            self.owner = Owner(Identity.generate(), keyservice_url=self.keyservice_url, pin=pin)
            self.owner.open()
            self.owner.register()
            self.user = User(Identity.generate(), keyservice_url=self.keyservice_url, pin=pin)
            self.user.open()
            self.user.register()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for instance in self._instances:
            with contextlib.suppress(Exception):
                instance.stop()
        self._instances.clear()
        for principal in (self.owner, self.user):
            if principal is not None:
                principal.close()
        if self._keyservice is not None:
            self._keyservice.send_signal(signal.SIGTERM)
            self._keyservice.wait(20)
            self._keyservice.close()
            self._keyservice = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.platform is not None:
            self.platform.close()
            self.platform = None
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pins ----------------------------------------------------------------------------------

    @property
    def platform_key_file(self) -> Path:
        return self.root / "platform.pub"

    def _platform(self) -> SimulatedPlatform:
        if self.platform is None:
            raise SealserveError("the stack is not open")
        return self.platform

    @property
    def trust(self) -> TrustAnchors:
        """What the stack's verifiers trust: the simulated platform's key, or the hardware's
        roots."""
        if self.hardware_trust is not None:
            return self.hardware_trust
        return TrustAnchors(simulated_platform_keys=frozenset({self._platform().public_key_bytes}))

    @property
    def keyservice_config(self) -> dict[str, str]:
        from sealserve.keyservice import measured_config

        return measured_config(self.keyservice_settings)

    @property
    def keyservice_measurement(self) -> str:
        return self._platform().measurement("keyservice", config=self.keyservice_config)

    @property
    def keyservice_policy(self) -> Policy:
        return Policy(
            measurements=frozenset({self.keyservice_measurement}),
            reference_values=self.reference_values,
        )

    @property
    def runtime_config(self) -> dict[str, str]:
        """The measured launch config of the stack's runtimes (the KeyService pin)."""
        return runtime_launch_config(keyservice_policy=self.keyservice_policy, trust=self.trust)

    @property
    def runtime_measurement(self) -> str:
        return self._platform().measurement("runtime", config=self.runtime_config)

    @property
    def runtime_policy(self) -> Policy:
        return self.policy_for(self.runtime_measurement)

    def policy_for(self, measurement: str) -> Policy:
        """A runtime policy pinning ``measurement`` (and the platform's reference values)."""
        return Policy(measurements=frozenset({measurement}), reference_values=self.reference_values)

    # -- the KeyService ------------------------------------------------------------------------

    def _start_keyservice(self) -> None:
        s = self.keyservice_settings
        data = self.root / "keyservice"
        data.mkdir(exist_ok=True)
        args = [
            "--data-dir", str(data),
            "--host", "127.0.0.1",
            "--port", "0",
            *(["--platform-key", str(self.platform_key_file)] if self.backend is None else []),
            "--rate-limit-per-s", repr(float(s.rate_limit_per_s)),
            "--rate-limit-burst", str(s.rate_limit_burst),
            "--log-level", self.log_level,
            *(["--db", s.db_url] if s.db_url else []),
            *(["--join", self.keyservice_join] if self.keyservice_join else []),
        ]  # fmt: skip
        read_fd, write_fd = os.pipe()
        log = os.open(self.root / "keyservice.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = self._platform().launch(
                "keyservice",
                args=args,
                config=self.keyservice_config,
                stdout=write_fd,
                stderr=log,
            )
        finally:
            os.close(write_fd)
            os.close(log)
        self._keyservice = process
        try:
            ready = read_ready_line(read_fd, process, _READY_TIMEOUT_S)
        finally:
            os.close(read_fd)
        if ready is None:
            raise SealserveError(
                "the KeyService did not start:\n"
                + (self.root / "keyservice.log").read_text(errors="replace")[-2000:]
            )
        self.keyservice_url = str(ready["url"])

    # -- models --------------------------------------------------------------------------------

    def add_model(
        self,
        name: str,
        onnx: Path | bytes,
        *,
        request_key: RequestKey | None = None,
        runtime_policy: Policy | None = None,
    ) -> StackModel:
        """Seal ``onnx`` under a new model key, store it, give the key to the KeyService,
        grant the user (runtime policy: this stack's runtime, unless ``runtime_policy``) and
        register a request key."""
        if self.owner is None or self.user is None:
            raise SealserveError("the stack is not open")
        model_id = self.owner.model_id(name)
        key = SymmetricKey.generate()
        sealed = io.BytesIO()
        version = 1
        with contextlib.suppress(SealserveError):
            version = self.owner.model(name).key_version + 1
        if isinstance(onnx, bytes):
            seal_model(key, io.BytesIO(onnx), sealed, model_id=model_id, version=version)
        else:
            with Path(onnx).open("rb") as source:
                seal_model(key, source, sealed, model_id=model_id, version=version)
        self.store.put(model_id, sealed.getbuffer(), key_version=version)
        self.owner.put_model_key(name, key, version=version)
        policy = runtime_policy or self.runtime_policy
        self.owner.grant(name, self.user.principal_id, policy)
        rkey = request_key or RequestKey.generate()
        self.user.put_request_key(model_id, rkey, policy)
        return StackModel(
            name=name,
            model_id=model_id,
            request_key=rkey,
            model_key=key,
            sealed_bytes=len(sealed.getbuffer()),
        )

    # -- instances -----------------------------------------------------------------------------

    def instance_command(
        self, *, port: int = 0, extra: Sequence[str] = (), tee_socket: Path | None = None
    ) -> list[str]:
        """``sealserve instance serve`` against this stack (its runtimes launched by the
        stack's platform, or by the platform daemon at ``tee_socket``: another node)."""
        if self.backend is None:
            pin = [
                "--platform-key", str(self.platform_key_file),
                "--keyservice-measurement", self.keyservice_measurement,
            ]  # fmt: skip
        else:
            config_file = self.root / "runtime-launch-config.json"
            config_file.write_text(json.dumps(self.runtime_config))
            pin = ["--launch-config", str(config_file)]
        return [
            sys.executable, "-m", "sealserve", "instance", "serve",
            "--store", str(self.root / "store"),
            "--keyservice", self.keyservice_url,
            "--port", str(port),
            "--tee-socket", str(tee_socket or self.socket_path),
            "--data-dir", str(self.root / "platform"),
            *pin,
            "--log-level", self.log_level,
            *extra,
        ]  # fmt: skip

    def start_instance(
        self,
        *,
        memory_budget_mb: int = 1024,
        threads: int = 2,
        concurrency: int = 4,
        baseline: bool = False,
        extra: Sequence[str] = (),
        name: str | None = None,
        tee_socket: Path | None = None,
    ) -> InstanceProcess:
        """Start ``sealserve instance serve`` and wait for its ready file (``tee_socket``:
        launch its runtime through another platform daemon than the stack's)."""
        label = name or f"instance-{len(self._instances) + 1}"
        ready_file = self.root / f"{label}.ready"
        log_path = self.root / f"{label}.log"
        args = [
            "--memory-budget-mb", str(memory_budget_mb),
            "--threads", str(threads),
            "--concurrency", str(concurrency),
            "--ready-file", str(ready_file),
            *(["--baseline-mode"] if baseline else []),
            *extra,
        ]  # fmt: skip
        env = dict(os.environ, SEALSERVE_SPAWNED_AT=repr(time.time()))
        lifeline = tie_to_this_process(env)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                self.instance_command(extra=args, tee_socket=tee_socket),
                stdout=log,
                stderr=log,
                env=env,
                pass_fds=(lifeline,),
                start_new_session=True,
            )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not ready_file.exists():
            if popen.poll() is not None or time.monotonic() > deadline:
                if popen.poll() is None:
                    popen.kill()
                    popen.wait(10)
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SealserveError(f"the instance did not become ready:\n{tail}")
            time.sleep(0.02)
        ready = json.loads(ready_file.read_text())
        instance = InstanceProcess(popen, ready, log_path)
        self._instances.append(instance)
        return instance
