"""The whole release flow and a sealed inference on the ``tsm`` backend (TDX), issue 12.

The platform daemon is a TD's measured launcher over the faithful configfs-tsm fake
(tests/hwfakes/configfs_tsm.py), extending RTMR3 with each entry it launches; the fake's quotes
(TDX quote v4, the real layout) are signed by a test Intel DCAP hierarchy generated here
(tests/hwfakes/dcap.py): a PCK certificate under a test root, a QE report binding the
attestation key, collateral signed by a test TCB signer.  The KeyService and the runtime trust
that test root through their measured launch configs (``dcap_root``), in this test only; owner
and user pin the KeyService's sealserve measurement and the VM images' reference values (the
TD's MRTD, the SEV-SNP VM's measurement).

TDX has no sealing key, so the KeyService in the TD cannot create a master key it could
recover: the database's first KeyService runs on an SEV-SNP VM (the configfs-tsm fake again,
reports signed by a test AMD chain, the SNP derived key of a fake firmware), and the one in the
TD joins it by attested master-key transfer (``--join``), each verifying the other's evidence
against its own measurement and the pinned replica images.  The SNP KeyService then stops; the
one in the TD serves alone, with the master key in memory only.

The denials run a runtime on a second TD (another fake, another launcher: another node) whose
quotes say DEBUG, or whose platform Intel's collateral calls out of date, against the
KeyService on the first; and a runtime of another code snapshot on the first TD.  Each gets
the fixed denial.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sealserve.attest import ReferenceValues, SnpAnchors, SnpReference, TdxReference, TrustAnchors
from sealserve.attest._backends import TsmBackend
from sealserve.attest._launch_log import LaunchEvent, register_of
from sealserve.attest._measure import (
    installed_package_dir,
    measure_manifest,
    package_sources,
    source_manifest,
)
from sealserve.attest._synthetic import SyntheticAmd
from sealserve.attest.tee import PlatformServer, SimulatedPlatform
from sealserve.bench._runtime_stack import LocalStack, StackModel, infer_tensors
from sealserve.config import KeyServiceSettings
from sealserve.errors import AccessDenied
from sealserve.keyservice import measured_config
from sealserve.keyservice._launch import LaunchedKeyService, launch_keyservice
from tests.hwfakes.configfs_tsm import FakeTsm
from tests.hwfakes.dcap import DcapHierarchy, DcapPlatform
from tests.unit.runtime.graphs import dense_model, plain_run

MRTD = hashlib.sha384(b"the TD's firmware").digest()


def _td(root: Path, platform: DcapPlatform, *, debug: bool = False) -> FakeTsm:
    def report(inblob: bytes, rtmr3: bytes) -> tuple[bytes, bytes | None]:
        rtmrs = [bytes(48), bytes(48), bytes(48), rtmr3]
        return platform.tdx_quote(inblob, mrtd=MRTD, rtmrs=rtmrs, debug=debug), None

    return FakeTsm(root, provider="tdx_guest", make_report=report)


def _backend(root: Path, fake: FakeTsm, collateral: bytes) -> TsmBackend:
    return TsmBackend(
        state_dir=root / "tee",
        report_dir=fake.report_dir,
        rtmr3=fake.rtmr3_path,
        sev_guest_device=root / "no-sev-guest",
        collateral=collateral,
    )


@pytest.fixture(scope="module")
def dcap() -> tuple[DcapHierarchy, DcapPlatform]:
    hierarchy = DcapHierarchy()
    return hierarchy, hierarchy.platform(fmspc=bytes.fromhex("b0c06f000000"), sgx_type=1)


@pytest.fixture(scope="module")
def tdx_stack(
    tmp_path_factory: pytest.TempPathFactory, dcap: tuple[DcapHierarchy, DcapPlatform]
) -> Iterator[LocalStack]:
    hierarchy, platform = dcap
    root = tmp_path_factory.mktemp("tdx-stack")
    amd = SyntheticAmd("Milan")
    trust = TrustAnchors(
        dcap_root_ca_der=hierarchy.root_der, snp=SnpAnchors(ark_pins={"Milan": amd.ark_pin})
    )
    tdx_image = ReferenceValues(name="td-image", tdx=TdxReference(mrtd=frozenset({MRTD.hex()})))
    snp_image = ReferenceValues(
        name="snp-image",
        snp=SnpReference(
            min_tcb={"Milan": SNP_TCB}, measurements=frozenset({SNP_MEASUREMENT.hex()})
        ),
    )
    images = (tdx_image, snp_image)
    replica_images = root / "replica-images.json"
    replica_images.write_text(json.dumps([doc.to_dict() for doc in images]))
    settings = KeyServiceSettings(
        db_url=f"sqlite+pysqlite:///{root / 'keyservice.db'}",
        replica_reference_values=replica_images,
    )
    with contextlib.ExitStack() as stack:
        td_fake = stack.enter_context(_td(root / "tsm", platform))
        backend = _backend(root / "platform", td_fake, platform.collateral_json("TDX"))
        local = LocalStack(
            root,
            log_level="INFO",
            backend=backend,
            trust=trust,
            reference_values=images,
            keyservice_settings=settings,
        )
        # The database's first KeyService, on an SEV-SNP VM, with the same measured settings.
        bootstrap = stack.enter_context(
            _snp_keyservice(root / "snp", amd, local.keyservice_settings)
        )
        local.keyservice_join = bootstrap.url
        with local:
            assert local.keyservice_measurement == bootstrap.measurement
            # the KeyService in the TD joined: the same identity, and it serves alone now
            assert local.owner is not None
            assert local.owner.keyservice.keyservice.keyservice_id == bootstrap.keyservice_id
            bootstrap.stop()
            yield local


SNP_TCB = {"bootloader": 9, "tee": 0, "snp": 21, "microcode": 210}
SNP_CHIP = bytes(range(64))
SNP_MEASUREMENT = bytes([0x5A]) * 48


@contextlib.contextmanager
def _snp_keyservice(
    root: Path, amd: SyntheticAmd, settings: KeyServiceSettings
) -> Iterator[LaunchedKeyService]:
    """A KeyService on an SEV-SNP VM's launcher (HOST_DATA commits to it alone)."""
    key, vcek = amd.leaf(tcb=SNP_TCB, chip_id=SNP_CHIP)
    manifest = source_manifest(package_sources(installed_package_dir()))
    measurement = measure_manifest(manifest, entry="keyservice", config=measured_config(settings))
    allowed = (LaunchEvent(entry="keyservice", measurement=bytes.fromhex(measurement)),)
    host_data = hashlib.sha256(register_of(allowed, "sha256")).digest()

    def report(inblob: bytes, _rtmr3: bytes) -> tuple[bytes, bytes | None]:
        signed = amd.report(
            key,
            tcb=SNP_TCB,
            report_data=inblob,
            measurement=SNP_MEASUREMENT,
            host_data=host_data,
            chip_id=SNP_CHIP,
        )
        return signed, amd.cert_table(vcek)

    with FakeTsm(root / "tsm", provider="sev_guest", make_report=report) as fake:
        backend = TsmBackend(
            state_dir=root / "platform" / "tee",
            report_dir=fake.report_dir,
            rtmr3=root / "no-rtmr3",
            sev_guest_device=root / "no-sev-guest",
            allowed=allowed,
            derived_key=lambda: hashlib.sha256(b"chip secret" + SNP_MEASUREMENT).digest(),
        )
        with SimulatedPlatform(data_dir=root / "platform", backend=backend) as vm:
            service = launch_keyservice(vm, settings, data_dir=root / "ks", log_level="INFO")
            try:
                assert service.measurement == measurement
                yield service
            finally:
                service.stop()


@contextlib.contextmanager
def _another_td(
    root: Path, platform: DcapPlatform, *, debug: bool = False, outdated: bool = False
) -> Iterator[Path]:
    """A second TD's launcher (another fake, another platform daemon): its socket."""
    sockets = Path(tempfile.mkdtemp(prefix="td2-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, sockets, ignore_errors=True)
        fake = stack.enter_context(_td(root / "tsm", platform, debug=debug))
        collateral = platform.collateral_json("TDX", outdated=outdated)
        td = stack.enter_context(
            SimulatedPlatform(
                data_dir=root / "platform", backend=_backend(root / "platform", fake, collateral)
            )
        )
        stack.enter_context(PlatformServer(td, socket_path=sockets / "tee.sock"))
        yield sockets / "tee.sock"


def _infer(stack: LocalStack, model: StackModel, **kwargs: object) -> None:
    assert stack.user is not None
    dense = {"X": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    with stack.start_instance(**kwargs) as instance:  # type: ignore[arg-type]
        infer_tensors(
            instance.client,
            model.request_key,
            dense,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
        )


def test_keys_are_released_to_the_attested_runtime_and_a_sealed_inference_answered(
    tdx_stack: LocalStack,
) -> None:
    stack = tdx_stack
    assert stack.platform is not None
    assert stack.platform.launch_register == "rtmr3"
    assert stack.user is not None
    # the measured configs carry the test root: another measurement than Intel's root gives
    assert "dcap_root" in stack.keyservice_config
    assert "dcap_root" in stack.runtime_config
    onnx = dense_model(13)
    model = stack.add_model("dense", onnx)
    inputs = {"X": np.random.default_rng(13).standard_normal((1, 64)).astype(np.float32)}
    with stack.start_instance() as instance:
        outputs, _ = infer_tensors(
            instance.client,
            model.request_key,
            inputs,
            model_id=model.model_id,
            user_id=stack.user.principal_id,
        )
    np.testing.assert_allclose(outputs["Y"], plain_run(onnx, inputs)["Y"], rtol=1e-5, atol=1e-5)
    assert {e.entry for e in stack.platform.launch_log()} == {"keyservice", "runtime"}


def test_a_runtime_on_another_good_td_is_released_to(
    tdx_stack: LocalStack, dcap: tuple[DcapHierarchy, DcapPlatform], tmp_path: Path
) -> None:
    """The control for the denials below: a second TD of the same image and platform."""
    model = tdx_stack.add_model("dense-td2", dense_model(7))
    with _another_td(tmp_path, dcap[1]) as socket_path:
        _infer(tdx_stack, model, tee_socket=socket_path)


@pytest.mark.parametrize("flaw", ["debug", "outdated"])
def test_a_debug_td_or_an_out_of_date_platform_gets_the_fixed_denial(
    tdx_stack: LocalStack, dcap: tuple[DcapHierarchy, DcapPlatform], tmp_path: Path, flaw: str
) -> None:
    model = tdx_stack.add_model(f"dense-{flaw}", dense_model(9))
    with (
        _another_td(tmp_path, dcap[1], **{flaw: True}) as socket_path,  # type: ignore[arg-type]
        pytest.raises(AccessDenied),
    ):
        _infer(tdx_stack, model, tee_socket=socket_path)


def test_a_runtime_whose_snapshot_differs_gets_the_fixed_denial(tdx_stack: LocalStack) -> None:
    stack = tdx_stack
    sources = package_sources(installed_package_dir())
    changed = [
        (path, data + b"\n# another build\n" if path.endswith("runtime/_main.py") else data)
        for path, data in sources
    ]
    other = measure_manifest(source_manifest(changed), entry="runtime", config=stack.runtime_config)
    assert other != stack.runtime_measurement
    model = stack.add_model("dense-other", dense_model(64), runtime_policy=stack.policy_for(other))
    with pytest.raises(AccessDenied):
        _infer(stack, model)
