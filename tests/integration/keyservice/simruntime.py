"""A simulated runtime for the KeyService tests: genuine evidence, the real release helper.

The evidence is the platform's: either from a process it launched (the ``attest-probe`` entry,
measured like any entry, asked for evidence over its private channel) or, where a test needs
hundreds of releases, issued by the platform for that same entry's measurement
(``issue_unlaunched_evidence``, the platform's in-process test API).  The runtime's key pair
and the release protocol are :class:`sealserve.keyservice.ReleaseSession`, exactly what the
real runtime uses.  (The key pair lives in the test process, not in the probe: the real
runtime entry, written later, holds its own.)
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterable

import httpx

from sealserve.attest import Evidence
from sealserve.attest.tee import SimulatedPlatform
from sealserve.client import KeyServicePin
from sealserve.protocol import (
    AttestedKeyService,
    Release,
    ReleaseSession,
    attestation_nonce,
    parse_challenge,
    verify_keyservice,
    wire,
)
from tests.integration.keyservice.conftest import KeyServiceProcess

PROBE = "attest-probe"


def probe_measurement(platform: SimulatedPlatform) -> str:
    return platform.measurement(PROBE)


def launched_evidence(platform: SimulatedPlatform, report_data: bytes) -> Evidence:
    """Evidence from a real measured launch of the probe entry."""
    read_fd, write_fd = os.pipe()
    try:
        process = platform.launch(
            PROBE, args=[report_data.hex()], stdout=write_fd, stderr=subprocess.DEVNULL
        )
    finally:
        os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            line = pipe.readline()
        assert process.wait(30) == 0
    finally:
        process.close()
    return Evidence.from_bytes(base64.b64decode(json.loads(line)["evidence"]))


class SimulatedRuntime:
    def __init__(
        self,
        ks: KeyServiceProcess | None = None,
        *,
        launched: bool = False,
        platform: SimulatedPlatform | None = None,
        url: str = "",
        pin: KeyServicePin | None = None,
    ) -> None:
        if ks is not None:
            platform, url, pin = ks.platform, ks.url, ks.pin()
        assert platform is not None
        assert pin is not None
        self.platform = platform
        self.pin = pin
        self.launched = launched
        self.http = httpx.Client(base_url=url, timeout=30)
        self.keyservice = self.attest()
        self.session = ReleaseSession(keyservice=self.keyservice)

    def attest(self) -> AttestedKeyService:
        nonce = attestation_nonce()
        r = self.http.get(f"/v1/attestation?nonce={wire.b64encode(nonce)}")
        pin = self.pin
        return verify_keyservice(
            r.content, nonce=nonce, policy=pin.policy, trust=pin.trust, now=time.time()
        )

    def evidence(self, report_data: bytes) -> Evidence:
        if self.launched:
            return launched_evidence(self.platform, report_data)
        return self.platform.issue_unlaunched_evidence(PROBE, report_data)

    def release(self, pairs: Iterable[tuple[str, str]]) -> Release:
        """Challenge, evidence, release, open: raises AccessDenied on the fixed 403."""
        nonce = parse_challenge(self.http.post("/v1/challenges").content)
        evidence = self.evidence(self.session.report_data(nonce))
        body = self.session.request_body(nonce=nonce, evidence=evidence, pairs=pairs)
        r = self.http.post("/v1/releases", content=body)
        return self.session.open(r.content, nonce=nonce, status=r.status_code)

    def close(self) -> None:
        self.http.close()
