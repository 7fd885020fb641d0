"""The measured launch of a confidential VM: sealserve's code in what the hardware reports.

In a confidential VM (TDX, SEV-SNP, a vTPM) the VM is the trust boundary, and the hardware
measures the VM image: firmware, kernel, command line.  It does not measure what the VM later
runs.  The node's platform daemon (the *measured launcher*, part of that image) closes the gap:
before it launches an entry for the first time it appends a **launch event** naming the entry
and its sealserve measurement (the snapshot measurement of :mod:`sealserve.attest._measure`) to
its **launch log**, and extends the event's digest into a runtime register the hardware reports:

==========  ==================================  ==========================================
backend     register                            extend
==========  ==================================  ==========================================
tsm (TDX)   RTMR3 (SHA-384)                     ``/sys/class/misc/tdx_guest/measurements/
                                                rtmr3:sha384``: write the 48-byte digest
tpm         PCR 23, SHA-256 bank (configurable) ``TPM2_PCR_Extend`` (reset at daemon start)
azure-cvm   PCR 23 of the vTPM                  ``TPM2_PCR_Extend``
tsm (SNP)   none: SNP has no extendable         the launch log is an allow list fixed at
            register; ``HOST_DATA`` (32 bytes)  VM launch: HOST_DATA = SHA-256 of the log's
            is set by the host at launch        :func:`register_of` (see docs)
==========  ==================================  ==========================================

Replaying the log (``reg = H(reg || H(event))`` from zeros, as RTMRs and PCRs extend) gives
the register's value; a verifier that finds the reported register equal to the replay knows
the log is complete and in order, and so which code the launcher has started.

**Whose evidence.** Any code in the VM can ask the hardware for a report, so the hardware's
report_data must say which launched process the evidence is for.  A launched process asks its
launcher (on its private channel, as on the simulated platform) for evidence over sealserve's
``report_data``; the launcher asks the hardware for a report whose report_data is
:func:`bind_report_data` of that report_data, the process's entry and its measurement.  The
evidence (format ``sealserve-launch/1``, :class:`LaunchEvidence`) carries the hardware
evidence, the launch log, the entry, the measurement and the report_data; the verifier
recomputes the binding, replays the log and checks the process's measurement is in it.  Its
claims then name the process's sealserve measurement: policies pin the same measurements on
every backend, beside the platform's reference values (the VM image).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final

from sealserve.attest._evidence import REPORT_DATA_BYTES
from sealserve.crypto import canonical_decode, canonical_encode

__all__ = [
    "HASHES",
    "LaunchEvent",
    "LaunchEvidence",
    "LaunchLogMismatch",
    "REGISTERS",
    "bind_report_data",
    "register_hash",
    "register_of",
]

_EVENT_LABEL: Final = "sealserve/launch-event"
_BIND_LABEL: Final = "sealserve/launch-report-data"
_VERSION: Final = 1
_MEASUREMENT_BYTES: Final = 32
_MAX_EVENTS: Final = 256
_MAX_INNER: Final = 128 * 1024
_ENTRY: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
_LOG_KEY: Final = re.compile(r"log\.(0|[1-9][0-9]{0,2})")

#: Registers a launch log may be replayed into: ``rtmr3``, ``host_data``, ``pcr.sha256.<N>``.
REGISTERS: Final = re.compile(r"rtmr3|host_data|pcr\.sha256\.(?:[0-9]|1[0-9]|2[0-3])")
HASHES: Final = {"sha256": hashlib.sha256, "sha384": hashlib.sha384}


def register_hash(register: str) -> str:
    """The hash algorithm of ``register`` (``sha384`` for RTMR3, else ``sha256``)."""
    if not isinstance(register, str) or not REGISTERS.fullmatch(register):
        raise ValueError(
            f"register must be rtmr3, host_data or pcr.sha256.<0-23>, got {register!r}"
        )
    return "sha384" if register == "rtmr3" else "sha256"


class LaunchLogMismatch(ValueError):
    """A launch log that does not replay to the register, or evidence that is not one."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchEvent:
    """One entry launched for the first time: its name and sealserve measurement."""

    entry: str
    measurement: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.entry, str) or not _ENTRY.fullmatch(self.entry):
            raise ValueError(f"entry must be a registered entry name, got {self.entry!r}")
        if len(self.measurement) != _MEASUREMENT_BYTES:
            raise ValueError(
                f"measurement must be {_MEASUREMENT_BYTES} bytes, got {len(self.measurement)}"
            )

    def encode(self) -> bytes:
        """The event as logged (what the digest extended into the register is over)."""
        return canonical_encode(
            {
                "label": _EVENT_LABEL,
                "version": _VERSION,
                "entry": self.entry,
                "measurement": bytes(self.measurement),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> LaunchEvent:
        try:
            fields = canonical_decode(bytes(data))
        except ValueError as exc:
            raise LaunchLogMismatch("a launch event is not a canonical mapping") from exc
        if set(fields) != {"label", "version", "entry", "measurement"}:
            raise LaunchLogMismatch("a launch event has other fields")
        entry, measurement = fields["entry"], fields["measurement"]
        if fields["label"] != _EVENT_LABEL or fields["version"] != _VERSION:
            raise LaunchLogMismatch("a launch event has another label or version")
        if not isinstance(entry, str) or not isinstance(measurement, bytes):
            raise LaunchLogMismatch("a launch event's fields have the wrong types")
        try:
            return cls(entry=entry, measurement=measurement)
        except ValueError as exc:
            raise LaunchLogMismatch(str(exc)) from exc

    def digest(self, hash_name: str) -> bytes:
        """The digest extended into a register of ``hash_name``."""
        return HASHES[hash_name](self.encode()).digest()


def register_of(events: Sequence[LaunchEvent], hash_name: str) -> bytes:
    """The register value after extending ``events`` in order, from zeros."""
    if hash_name not in HASHES:
        raise ValueError(f"hash_name must be one of {sorted(HASHES)}, got {hash_name!r}")
    algorithm = HASHES[hash_name]
    value = bytes(algorithm().digest_size)
    for event in events:
        value = algorithm(value + event.digest(hash_name)).digest()
    return value


def bind_report_data(report_data: bytes, *, entry: str, measurement: bytes) -> bytes:
    """The hardware report_data of evidence for the launched process (``entry``,
    ``measurement``) that asked for sealserve's ``report_data`` (64 bytes: SHA-512)."""
    if len(report_data) != REPORT_DATA_BYTES:
        raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(report_data)}")
    LaunchEvent(entry=entry, measurement=measurement)  # validates both
    encoded = canonical_encode(
        {
            "label": _BIND_LABEL,
            "report_data": bytes(report_data),
            "entry": entry,
            "measurement": bytes(measurement),
        }
    )
    return hashlib.sha512(encoded).digest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchEvidence:
    """What ``sealserve-launch/1`` evidence carries (``raw`` is :meth:`to_raw`)."""

    #: The hardware evidence (``Evidence.to_bytes()`` of a TDX quote, SNP report, TPM quote).
    platform: bytes
    #: Which register the log was replayed into (see :data:`REGISTERS`).
    register: str
    events: tuple[LaunchEvent, ...]
    entry: str
    measurement: bytes
    report_data: bytes

    def __post_init__(self) -> None:
        register_hash(self.register)
        if not 0 < len(self.platform) <= _MAX_INNER:
            raise ValueError(f"platform evidence must be 1 to {_MAX_INNER} bytes")
        if len(self.events) > _MAX_EVENTS:
            raise ValueError(f"a launch log has at most {_MAX_EVENTS} events")
        if len(self.report_data) != REPORT_DATA_BYTES:
            raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes")
        LaunchEvent(entry=self.entry, measurement=self.measurement)

    @property
    def bound_report_data(self) -> bytes:
        """The report_data the hardware evidence must carry."""
        return bind_report_data(self.report_data, entry=self.entry, measurement=self.measurement)

    def to_raw(self) -> bytes:
        fields: dict[str, str | int | bytes] = {
            "platform": self.platform,
            "register": self.register,
            "entry": self.entry,
            "measurement": bytes(self.measurement),
            "report_data": bytes(self.report_data),
        }
        for index, event in enumerate(self.events):
            fields[f"log.{index}"] = event.encode()
        return canonical_encode(fields)

    @classmethod
    def from_raw(cls, raw: bytes) -> LaunchEvidence:
        """Parse :meth:`to_raw`; :class:`LaunchLogMismatch` when it is not launch evidence."""
        try:
            fields = canonical_decode(bytes(raw))
        except ValueError as exc:
            raise LaunchLogMismatch("launch evidence is not a canonical mapping") from exc
        required = {"platform", "register", "entry", "measurement", "report_data"}
        if not required <= set(fields):
            raise LaunchLogMismatch("launch evidence lacks a field")
        logged = sorted(
            (int(m.group(1)), key)
            for key in fields
            if key not in required and (m := _LOG_KEY.fullmatch(key)) is not None
        )
        if len(logged) != len(fields) - len(required):
            raise LaunchLogMismatch("launch evidence has unknown fields")
        if [index for index, _ in logged] != list(range(len(logged))):
            raise LaunchLogMismatch("the launch log's events are not numbered 0, 1, ...")
        events = []
        for _, key in logged:
            value = fields[key]
            if not isinstance(value, bytes):
                raise LaunchLogMismatch("a launch event is not bytes")
            events.append(LaunchEvent.decode(value))
        platform, register = fields["platform"], fields["register"]
        entry, measurement, report_data = (
            fields["entry"],
            fields["measurement"],
            fields["report_data"],
        )
        if not (
            isinstance(platform, bytes)
            and isinstance(register, str)
            and isinstance(entry, str)
            and isinstance(measurement, bytes)
            and isinstance(report_data, bytes)
        ):
            raise LaunchLogMismatch("launch evidence fields have the wrong types")
        try:
            return cls(
                platform=platform,
                register=register,
                events=tuple(events),
                entry=entry,
                measurement=measurement,
                report_data=report_data,
            )
        except ValueError as exc:
            raise LaunchLogMismatch(str(exc)) from exc

    def check(self, *, register_value: bytes, platform_report_data: bytes) -> None:
        """Raise :class:`LaunchLogMismatch` unless the hardware's ``register_value`` is the
        replay of the log, the process's launch is in the log, and the hardware evidence's
        ``platform_report_data`` binds this evidence's report_data to that process.

        For ``host_data`` (SEV-SNP without a vTPM) the log is the allow list fixed at VM
        launch and the register is ``HOST_DATA`` = SHA-256 of its replay (SHA-256 bank).
        """
        hash_name = register_hash(self.register)
        expected = register_of(self.events, hash_name)
        if self.register == "host_data":
            expected = hashlib.sha256(expected).digest()
        if not hmac.compare_digest(expected, bytes(register_value)):
            raise LaunchLogMismatch("the launch log does not replay to the reported register")
        own = LaunchEvent(entry=self.entry, measurement=self.measurement)
        if own not in self.events:
            raise LaunchLogMismatch("the process's launch is not in the launch log")
        if not hmac.compare_digest(self.bound_report_data, bytes(platform_report_data)):
            raise LaunchLogMismatch("the hardware report_data does not bind this process")
