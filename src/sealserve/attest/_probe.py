"""The ``attest-probe`` entry: a measured process that obtains evidence and prints it.

``attest-probe REPORT_DATA_HEX [--out-fd] [--hold] [--sealing-key] [--fresh-key]`` writes one
JSON line, ``{"evidence": <base64 Evidence.to_bytes()>, "config": {...}, "passed_fds": n}``, to
stdout,
or with ``--out-fd`` to the first descriptor the launcher passed; with ``--hold`` it then
waits for a signal (to exercise a launcher's terminate and kill).  With ``--sealing-key`` the
line also carries ``"sealing_key_sha256"``: the SHA-256 of the probe's own sealing key for the
purpose ``attest-probe`` (a fingerprint, never the key).  With ``--fresh-key`` the argument is
a nonce instead: the probe makes a key pair of its own and asks for evidence binding its public
key to the nonce, as a runtime does, and the line carries ``"public_key"`` (hex; public).
``sealserve attest probe``
and the integration tests use it to show the whole measured-launch protocol end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections.abc import Sequence

from sealserve.attest._local import (
    launch_config,
    local_evidence,
    local_sealing_key,
    passed_fds,
)
from sealserve.attest._wire import b64

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    flags = ("--out-fd", "--hold", "--sealing-key", "--fresh-key")
    to_fd, hold, sealing, fresh = (flag in args for flag in flags)
    args = [a for a in args if a not in flags]
    if len(args) != 1:
        sys.stderr.write(
            "usage: attest-probe REPORT_DATA_HEX [--out-fd] [--hold] [--sealing-key] "
            "[--fresh-key]\n"
        )
        return 2
    try:
        report_data = bytes.fromhex(args[0])
    except ValueError:
        sys.stderr.write("attest-probe: REPORT_DATA_HEX is not hex\n")
        return 2
    public_key = b""
    if fresh:
        from sealserve.attest._evidence import report_data_for
        from sealserve.crypto import HpkeKeyPair

        public_key = HpkeKeyPair.generate().public_key_bytes()  # made here, never inherited
        report_data = report_data_for(public_key, report_data)
    evidence = local_evidence(report_data)
    fds = passed_fds()
    doc: dict[str, object] = {
        "evidence": b64(evidence.to_bytes()),
        "config": launch_config(),
        "passed_fds": len(fds),
    }
    if fresh:
        doc["public_key"] = public_key.hex()
    if sealing:
        doc["sealing_key_sha256"] = hashlib.sha256(local_sealing_key("attest-probe")).hexdigest()
    line = json.dumps(doc)
    if to_fd:
        if not fds:
            sys.stderr.write("attest-probe: --out-fd given but no descriptor was passed\n")
            return 2
        os.write(fds[0], (line + "\n").encode())
    else:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    while hold:
        signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
