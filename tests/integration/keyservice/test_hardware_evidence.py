"""A real KeyService releases keys on SEV-SNP, TPM-quote, Azure-CVM, SGX and TDX evidence.

The hardware is synthetic (a test AMD hierarchy, a test TPM CA and a test Intel DCAP hierarchy,
generated here), so the KeyService is launched with measured trust in exactly those roots: its
measurement says so, and a KeyService launched without them refuses the same evidence.  The
confidential VM kinds are granted through reference values, the way an owner pins a VM image;
SGX and TDX quotes through MRENCLAVE and MRTD.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from sealserve.attest import Evidence, Policy, ReferenceValues, SnpReference, TpmReference
from sealserve.attest._snp_cache import fill_cache
from sealserve.attest._synthetic import SyntheticAmd, SyntheticTpm, azure_evidence
from sealserve.attest.tee import SimulatedPlatform
from sealserve.client import KeyServicePin, Owner, User
from sealserve.config import KeyServiceSettings
from sealserve.crypto import Identity, RequestKey, SymmetricKey
from sealserve.errors import AccessDenied
from sealserve.keyservice import measured_config
from sealserve.keyservice._launch import LaunchedKeyService, launch_keyservice
from tests.hwfakes.dcap import DcapHierarchy
from tests.integration.keyservice.simruntime import SimulatedRuntime

TCB = {"bootloader": 7, "tee": 1, "snp": 22, "microcode": 211}
PCRS = {"sha256": {i: hashlib.sha256(b"boot %d" % i).digest() for i in range(8)}}
CHIP = bytes(range(64))
MRENCLAVE = hashlib.sha256(b"an enclave").digest()
MRTD = hashlib.sha384(b"a TD").digest()


class Hardware:
    def __init__(self, root: Path) -> None:
        self.amd = SyntheticAmd("Genoa")
        self.tpm = SyntheticTpm(scheme="rsapss")
        self.vcek_key, self.vcek = self.amd.leaf(tcb=TCB, chip_id=CHIP)
        downloads = root / "kds"
        downloads.mkdir()
        (downloads / "cert_chain").write_bytes(
            self.amd.ask.public_bytes(Encoding.PEM) + self.amd.ark.public_bytes(Encoding.PEM)
        )
        self.cache = root / "snp-cache"
        fill_cache(downloads, self.cache, ark_pins={"Genoa": self.amd.ark_pin})
        self.roots = root / "tpm-roots.pem"
        self.roots.write_bytes(self.tpm.ca.public_bytes(Encoding.PEM))
        self.dcap = DcapHierarchy()
        self.sgx_platform = self.dcap.platform()
        self.tdx_platform = self.dcap.platform(fmspc=bytes.fromhex("b0c06f000000"), sgx_type=1)
        self.dcap_root = root / "dcap-root.pem"
        self.dcap_root.write_bytes(self.dcap.root.public_bytes(Encoding.PEM))

    def settings(self, db: str, *, trusted: bool = True) -> KeyServiceSettings:
        base = KeyServiceSettings(port=0, db_url=db, rate_limit_per_s=1e4, rate_limit_burst=10_000)
        if not trusted:
            return base
        return KeyServiceSettings(
            port=0,
            db_url=db,
            rate_limit_per_s=1e4,
            rate_limit_burst=10_000,
            snp_ark_pins=f"Genoa={self.amd.ark_pin}",
            snp_cache=self.cache,
            tpm_roots=self.roots,
            dcap_root=self.dcap_root,
        )

    def snp(self, report_data: bytes, *, policy: int = 0x30000) -> Evidence:
        report = self.amd.report(
            self.vcek_key, tcb=TCB, chip_id=CHIP, report_data=report_data, policy=policy
        )
        return self.amd.snp_evidence(report, self.vcek)

    def tpm_quote(self, report_data: bytes) -> Evidence:
        return self.tpm.evidence(report_data=report_data, pcrs=PCRS)

    def azure(self, report_data: bytes) -> Evidence:
        evidence, _, _ = azure_evidence(
            self.amd, self.tpm, report_data=report_data, pcrs=PCRS, tcb=TCB, chip_id=CHIP
        )
        return evidence

    def sgx(self, report_data: bytes, *, debug: bool = False, outdated: bool = False) -> Evidence:
        p = self.sgx_platform
        quote = p.sgx_quote(report_data, mrenclave=MRENCLAVE, debug=debug)
        return Evidence.from_quote(quote, collateral=p.collateral_json("SGX", outdated=outdated))

    def tdx(self, report_data: bytes, *, debug: bool = False, outdated: bool = False) -> Evidence:
        p = self.tdx_platform
        quote = p.tdx_quote(report_data, mrtd=MRTD, debug=debug)
        return Evidence.from_quote(quote, collateral=p.collateral_json("TDX", outdated=outdated))


SNP_REFS = ReferenceValues(name="genoa-image", snp=SnpReference(min_tcb={"Genoa": TCB}))
TPM_REFS = ReferenceValues(
    name="tpm-image",
    tpm=TpmReference(pcrs={i: {PCRS["sha256"][i].hex()} for i in range(8)}),
)
AZURE_REFS = ReferenceValues(name="azure-image", snp=SNP_REFS.snp, tpm=TPM_REFS.tpm)
POLICIES = {
    "snp": Policy(measurements=frozenset({"00" * 48}), reference_values=(SNP_REFS,)),
    "tpm": Policy(reference_values=(TPM_REFS,)),
    "azure": Policy(reference_values=(AZURE_REFS,)),
    "sgx": Policy(measurements=frozenset({MRENCLAVE.hex()})),
    "tdx": Policy(measurements=frozenset({MRTD.hex()})),
}


class HardwareRuntime(SimulatedRuntime):
    """A runtime whose evidence comes from the synthetic hardware instead of the platform."""

    def __init__(self, make: Callable[[bytes], Evidence], **kwargs: object) -> None:
        self.make = make
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def evidence(self, report_data: bytes) -> Evidence:
        return self.make(report_data)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedPlatform]:
    with SimulatedPlatform(data_dir=tmp_path_factory.mktemp("platform")) as p:
        yield p


@pytest.fixture(scope="module")
def hardware(tmp_path_factory: pytest.TempPathFactory) -> Hardware:
    return Hardware(tmp_path_factory.mktemp("hardware"))


def _launch(
    platform: SimulatedPlatform, root: Path, settings: KeyServiceSettings
) -> LaunchedKeyService:
    pub = root / "platform.pub"
    pub.write_text(platform.public_key_bytes.hex() + "\n")
    return launch_keyservice(
        platform, settings, data_dir=root / "data", platform_key=pub, log_level="DEBUG"
    )


def _publish(service: LaunchedKeyService, pin: KeyServicePin) -> tuple[str, dict[str, str]]:
    owner = Owner(Identity.generate(), keyservice_url=service.url, pin=pin)
    user = User(Identity.generate(), keyservice_url=service.url, pin=pin)
    models = {}
    with owner, user:
        owner.register()
        user.register()
        for kind, policy in POLICIES.items():
            owner.put_model_key(kind, SymmetricKey.generate())
            owner.grant(kind, user.principal_id, policy)
            models[kind] = owner.model_id(kind)
            user.put_request_key(models[kind], RequestKey.generate(), policy)
    return user.principal_id, models


def test_releases_on_each_kind_of_hardware_evidence(
    platform: SimulatedPlatform, hardware: Hardware, tmp_path: Path
) -> None:
    settings = hardware.settings(f"sqlite+pysqlite:///{tmp_path / 'ks.db'}")
    service = _launch(platform, tmp_path, settings)
    try:
        # The hardware the KeyService trusts is part of what clients pin.
        assert service.measurement == platform.measurement(
            "keyservice", config=measured_config(settings)
        )
        assert service.measurement != platform.measurement("keyservice")
        pin = KeyServicePin(
            policy=Policy(measurements=frozenset({service.measurement})),
            trust=platform.trust_anchors(),
        )
        user_id, models = _publish(service, pin)
        makers = {
            "snp": hardware.snp,
            "tpm": hardware.tpm_quote,
            "azure": hardware.azure,
            "sgx": hardware.sgx,
            "tdx": hardware.tdx,
        }
        for kind, make in makers.items():
            runtime = HardwareRuntime(make, platform=platform, url=service.url, pin=pin)
            try:
                release = runtime.release([(user_id, models[kind])])
                assert (user_id, models[kind]) in release.keys
                # Evidence of one kind does not open a grant pinned for another.
                other = models["tpm" if kind != "tpm" else "snp"]
                with pytest.raises(AccessDenied):
                    runtime.release([(user_id, other)])
            finally:
                runtime.close()
        # A debug guest, enclave or TD is refused (the policy does not allow debug), and so is
        # a platform whose TCB Intel's collateral calls out of date.
        refused: list[tuple[Callable[[bytes], Evidence], str]] = [
            (lambda rd: hardware.snp(rd, policy=0x30000 | 1 << 19), "snp"),
            (lambda rd: hardware.sgx(rd, debug=True), "sgx"),
            (lambda rd: hardware.tdx(rd, debug=True), "tdx"),
            (lambda rd: hardware.sgx(rd, outdated=True), "sgx"),
            (lambda rd: hardware.tdx(rd, outdated=True), "tdx"),
        ]
        for make, kind in refused:
            bad = HardwareRuntime(make, platform=platform, url=service.url, pin=pin)
            try:
                with pytest.raises(AccessDenied):
                    bad.release([(user_id, models[kind])])
            finally:
                bad.close()
    finally:
        service.stop()


def test_a_keyservice_without_those_roots_refuses_the_same_evidence(
    platform: SimulatedPlatform, hardware: Hardware, tmp_path: Path
) -> None:
    settings = hardware.settings(f"sqlite+pysqlite:///{tmp_path / 'ks.db'}", trusted=False)
    service = _launch(platform, tmp_path, settings)
    try:
        pin = KeyServicePin(
            policy=Policy(measurements=frozenset({service.measurement})),
            trust=platform.trust_anchors(),
        )
        user_id, models = _publish(service, pin)
        makers = {
            "snp": hardware.snp,
            "tpm": hardware.tpm_quote,
            "azure": hardware.azure,
            "sgx": hardware.sgx,
            "tdx": hardware.tdx,
        }
        for kind, make in makers.items():
            runtime = HardwareRuntime(make, platform=platform, url=service.url, pin=pin)
            try:
                with pytest.raises(AccessDenied):
                    runtime.release([(user_id, models[kind])])
            finally:
                runtime.close()
    finally:
        service.stop()
