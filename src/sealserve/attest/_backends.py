"""Evidence backends behind one interface, chosen by ``attest.backend``.

The platform daemon is the node's *measured launcher*.  On the simulated platform it signs
evidence itself; with a hardware backend it asks the hardware, and before it launches an entry
it extends that entry's sealserve measurement into a register the hardware reports (see
:mod:`sealserve.attest._launch_log`).  A :class:`LaunchBackend` is what it needs of the
hardware:

* :attr:`~LaunchBackend.register` and :meth:`~LaunchBackend.extend`: the measured launch;
* :meth:`~LaunchBackend.evidence`: hardware evidence over a 64-byte report_data;
* :meth:`~LaunchBackend.sealing_root`: the root of the launched processes' sealing keys.

:func:`open_backend` builds the configured one (``tsm``, ``tpm``, ``azure-cvm``) or, for
``auto``, the one whose hardware is present; it never falls back to the simulated platform on
its own.  (``gramine`` is not a launcher backend: inside SGX the enclave is the process, which
gets its evidence from Gramine itself, :mod:`sealserve.attest._gramine`.)
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from sealserve._log import get_logger
from sealserve.attest._certs import Rejected
from sealserve.attest._evidence import FORMAT_TDX_DCAP, REPORT_DATA_BYTES, Evidence
from sealserve.attest._hw_evidence import snp_evidence
from sealserve.attest._launch_log import LaunchEvent, register_of
from sealserve.attest._tsm import Rtmr, TsmReports, snp_derived_key
from sealserve.config import AttestSettings
from sealserve.errors import TeeError

__all__ = ["LaunchBackend", "TsmBackend", "detect_backend", "open_backend"]

_log = get_logger(__name__)
_SNP_HOST_DATA: Final = slice(0xC0, 0xE0)
_SNP_REPORT_BYTES: Final = 0x4A0


@runtime_checkable
class LaunchBackend(Protocol):
    """What the measured launcher needs of the hardware (see the module docstring)."""

    @property
    def name(self) -> str:
        """The ``attest.backend`` value (``tsm``, ``tpm``, ``azure-cvm``)."""
        ...

    @property
    def register(self) -> str:
        """The register launch events are replayed into (``rtmr3``, ``pcr.sha256.23``,
        ``host_data``)."""
        ...

    def open(self) -> list[LaunchEvent]:
        """Connect to the hardware; the launch events already in the register (this boot)."""
        ...

    def extend(self, event: LaunchEvent) -> None:
        """Extend the register with ``event`` (before its process starts)."""
        ...

    def evidence(self, report_data: bytes) -> Evidence:
        """Hardware evidence whose report_data is ``report_data`` (64 bytes)."""
        ...

    def sealing_root(self) -> bytes:
        """At least 32 bytes the host cannot learn, the same on every start of this VM image
        on this hardware."""
        ...

    def close(self) -> None: ...


class TsmBackend:
    """configfs-tsm: TDX (RTMR3) or SEV-SNP (HOST_DATA), by the entry's provider.

    ``state_dir`` keeps the TDX launch log across restarts of the launcher (RTMR3 cannot be
    reset; a log that does not replay to it refuses to start).  ``collateral`` is sent with
    TDX quotes.  On SNP, ``allowed`` is the launch log the VM was started for: HOST_DATA must be
    the SHA-256 of its replay, and only its events may be launched.
    """

    def __init__(
        self,
        *,
        state_dir: str | Path,
        report_dir: str | Path,
        rtmr3: str | Path,
        sev_guest_device: str | Path,
        collateral: bytes | None = None,
        allowed: tuple[LaunchEvent, ...] | None = None,
        derived_key: Callable[[], bytes] | None = None,
    ) -> None:
        self._reports = TsmReports(report_dir=report_dir)
        # SNP_GET_DERIVED_KEY on the device; a test's fake firmware may stand in for it.
        self._derived_key = derived_key
        self._rtmr = Rtmr(rtmr3)
        self._device = Path(sev_guest_device)
        self._state = Path(state_dir)
        self._collateral = collateral
        self._allowed = allowed
        self._events: list[LaunchEvent] = []
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "tsm"

    @property
    def provider(self) -> str:
        return self._reports.provider

    @property
    def register(self) -> str:
        return "rtmr3" if self._reports.provider == "tdx_guest" else "host_data"

    def open(self) -> list[LaunchEvent]:
        self._reports.open()
        try:
            if self.provider == "tdx_guest":
                self._events = self._resume_tdx()
            else:
                self._events = self._check_snp_host_data()
        except BaseException:
            self._reports.close()
            raise
        return list(self._events)

    def extend(self, event: LaunchEvent) -> None:
        with self._lock:
            if self.provider == "sev_guest":
                if event not in self._events:
                    raise TeeError(
                        f"{event.entry} measuring {event.measurement.hex()} is not in the launch "
                        "log this SEV-SNP VM was started for (HOST_DATA); SNP has no register "
                        "to extend, so only the code fixed at VM launch may run"
                    )
                return
            self._rtmr.extend(event.digest("sha384"))
            self._events.append(event)
            self._save()

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_BYTES:
            raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes")
        outblob, auxblob = self._reports.report(report_data)
        if self.provider == "tdx_guest":
            if self._collateral is None:
                raise TeeError(
                    "no DCAP collateral to send with TDX quotes: set attest.dcap_collateral to "
                    "the collateral fetched for this platform"
                )
            evidence = Evidence.from_quote(outblob, collateral=self._collateral)
            if evidence.format != FORMAT_TDX_DCAP or evidence.report_data != report_data:
                raise TeeError("configfs-tsm returned a quote that is not over this report_data")
            return evidence
        return _snp_evidence(outblob, auxblob, report_data)

    def sealing_root(self) -> bytes:
        if self.provider == "sev_guest":
            if self._derived_key is not None:
                return self._derived_key()
            return snp_derived_key(self._device)
        raise TeeError(
            "TDX has no sealing key: a TD's secrets that must survive a restart come from a "
            "peer that releases them after verifying the TD's quote (a KeyService on a TD "
            "obtains its master key from a running KeyService: --join)"
        )

    def close(self) -> None:
        self._reports.close()

    # -- TDX: the launch log persists, RTMR3 does not reset ------------------------------------

    def _log_file(self) -> Path:
        return self._state / "launch-log.json"

    def _resume_tdx(self) -> list[LaunchEvent]:
        current = self._current_rtmr3()
        events = _read_log(self._log_file())
        if register_of(events, "sha384") == current:
            return events
        if current == bytes(48):  # a new boot: the old log is of a previous one
            _log.event("launcher.log_reset", register="rtmr3", stale_events=len(events))
            self._events = []
            self._save()
            return []
        raise TeeError(
            "RTMR3 does not replay from the launch log in "
            f"'{self._log_file()}': something else extended it, or the log was lost. A TD's "
            "RTMR3 resets only at boot: reboot the VM"
        )

    def _current_rtmr3(self) -> bytes:
        import dcap_qvl

        quote, _ = self._reports.report(bytes(REPORT_DATA_BYTES))
        try:
            report = dcap_qvl.parse_quote(quote).report
            return bytes(report.rt_mr3)
        except (ValueError, AttributeError) as exc:
            raise TeeError(f"configfs-tsm returned a TDX quote that does not parse: {exc}") from exc

    def _save(self) -> None:
        _write_log(self._log_file(), self._events)

    # -- SNP: the allow list fixed at VM launch ------------------------------------------------

    def _check_snp_host_data(self) -> list[LaunchEvent]:
        if self._allowed is None:
            raise TeeError(
                "an SEV-SNP launcher needs the launch log the VM was started for "
                "(attest.snp_launch_log): SNP has no register it can extend"
            )
        report, _ = self._reports.report(bytes(REPORT_DATA_BYTES))
        if len(report) < _SNP_REPORT_BYTES:
            raise TeeError(f"configfs-tsm returned an SNP report of {len(report)} bytes")
        expected = hashlib.sha256(register_of(self._allowed, "sha256")).digest()
        if report[_SNP_HOST_DATA] != expected:
            raise TeeError(
                "this VM's HOST_DATA is not the SHA-256 of the configured launch log's replay: "
                "the VM was started for other code (see docs/deploy-sev-snp.md)"
            )
        return list(self._allowed)


def _snp_evidence(report: bytes, cert_table: bytes | None, report_data: bytes) -> Evidence:
    try:
        evidence = snp_evidence(report, cert_table=cert_table)
    except Rejected as exc:
        raise TeeError(f"configfs-tsm returned an SNP report that does not parse: {exc}") from exc
    if evidence.report_data != report_data:
        raise TeeError("configfs-tsm returned an SNP report that is not over this report_data")
    return evidence


def _read_log(path: Path) -> list[LaunchEvent]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise TeeError(f"cannot read the launch log '{path}': {exc}") from exc
    try:
        return [
            LaunchEvent(entry=str(e["entry"]), measurement=bytes.fromhex(e["measurement"]))
            for e in doc["events"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise TeeError(f"'{path}' is not a launch log: {exc}") from exc


def _write_log(path: Path, events: list[LaunchEvent]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    doc = {
        "version": 1,
        "events": [{"entry": e.entry, "measurement": e.measurement.hex()} for e in events],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def read_launch_log(path: str | Path) -> tuple[LaunchEvent, ...]:
    """A launch log file (``{"version": 1, "events": [{"entry", "measurement"}]}``)."""
    return tuple(_read_log(Path(path)))


# -- selection -----------------------------------------------------------------------------


def detect_backend(settings: AttestSettings) -> str | None:
    """The hardware backend present on this machine, or None: configfs-tsm with a provider,
    Gramine's attestation interface, an Azure vTPM, a TPM."""
    report_dir = Path(settings.tsm_report_dir)
    if report_dir.is_dir():
        return "tsm"
    if (Path(settings.gramine_dir) / "attestation_type").exists():
        return "gramine"
    if Path("/dev/tpmrm0").exists():
        return "azure-cvm" if _azure_vtpm(settings) else "tpm"
    return None


def _azure_vtpm(settings: AttestSettings) -> bool:
    from sealserve.attest._tpm_device import AZURE_HCL_REPORT_NV, TpmDevice

    try:
        TpmDevice(tcti=settings.tpm_tcti).run("tpm2_nvreadpublic", f"{AZURE_HCL_REPORT_NV:#x}")
    except TeeError:
        return False
    return True


BackendFactory = Callable[[AttestSettings, Path], LaunchBackend]


def open_backend(settings: AttestSettings, *, data_dir: str | Path) -> LaunchBackend | None:
    """The launcher backend ``settings`` name (None: the simulated platform).

    ``auto`` picks the hardware present; with none it refuses to start
    (:class:`~sealserve.errors.TeeError`) unless ``allow_simulated``.  ``gramine`` is refused
    here: Gramine processes attest themselves.
    """
    name = settings.backend
    if name == "auto":
        found = detect_backend(settings)
        if found is None:
            if settings.allow_simulated:
                _log.event("attest.auto_simulated")
                return None
            raise TeeError(
                "attest.backend is 'auto' and this machine has no TEE (no configfs-tsm, "
                "Gramine, or TPM). Refusing to start on the simulated platform; set "
                "attest.allow_simulated = true for development, or attest.backend = 'simulated'"
            )
        _log.event("attest.auto_detected", backend=found)
        name = found
    if name == "simulated":
        return None
    if name == "gramine":
        raise TeeError(
            "the gramine backend has no launcher: each process is its own SGX enclave, "
            "started by gramine-sgx from the manifest of 'sealserve attest gramine-manifest' "
            "(docs/deploy-sgx-gramine.md)"
        )
    state = Path(data_dir) / "tee"
    if name == "tsm":
        return TsmBackend(
            state_dir=state,
            report_dir=settings.tsm_report_dir,
            rtmr3=settings.tdx_rtmr3,
            sev_guest_device=settings.sev_guest_device,
            collateral=_optional_file(settings.dcap_collateral, "attest.dcap_collateral"),
            allowed=read_launch_log(settings.snp_launch_log) if settings.snp_launch_log else None,
        )
    from sealserve.attest._tpm_backend import TpmBackend

    return TpmBackend.from_settings(settings, azure=name == "azure-cvm")


def _optional_file(path: str, name: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TeeError(f"cannot read {name} '{path}': {exc.strerror or exc}") from exc
