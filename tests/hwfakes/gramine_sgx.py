"""A stand-in for ``gramine-sgx`` (and for ``gramine-manifest`` + ``gramine-sgx-sign``).

:func:`sign` renders a manifest template of ``sealserve attest gramine-manifest`` (its Jinja
placeholders replaced by fixed values) into ``<entry>.manifest.sgx`` and writes
``<entry>.sig``: a SIGSTRUCT-shaped file whose ENCLAVEHASH (offset 960) is this fake's
MRENCLAVE, SHA-256 over the manifest (without its ``sgx.debug`` line: SGX keeps DEBUG in the
attributes, not in MRENCLAVE) and over every trusted file of the snapshot, by path and content.

Run as ``python -B gramine_sgx.py --platform FILE --cpu-secret HEX <entry>`` in the manifests
directory, it plays
``gramine-sgx`` for one enclave, in one process, as Gramine's LibOS shares the enclave with
the application:

* it recomputes MRENCLAVE and refuses to start when the ``.sig`` does not match (as EINIT
  refuses a SIGSTRUCT for other pages);
* the application gets the manifest's ``loader.argv`` (its own command line is ignored, as
  ``loader.insecure__use_cmdline_argv = false`` says) and exactly the environment the manifest
  fixes or passes through;
* ``/dev/attestation`` is a :class:`tests.hwfakes.gramine.FakeGramine` directory served by a
  thread of this process (``SEALSERVE_TEE_GRAMINE_DIR`` names it: the one variable the real
  Gramine does not need), whose quotes a DCAP platform of the test hierarchy signs (its PCK
  key and chain in the ``--platform`` file), DEBUG when the manifest says
  ``sgx.debug = true``, and whose sealing key derives from ``--cpu-secret`` (the CPU's).

Where it differs from Gramine (stated so no test leans on it unknowingly): the trusted and
allowed files are not enforced, and a named Unix socket reaches the host (Gramine maps named
sockets to its own encrypted pipes between its own processes; see docs/deploy-sgx-gramine.md).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

_SIGSTRUCT_BYTES = 1808
_ENCLAVEHASH = slice(960, 992)
_RENDER = {
    "{{ entrypoint }}": "/usr/bin/python3",
    "{{ gramine.libos }}": "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so",
    "{{ gramine.runtimedir() }}": "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc",
    "{{ arch_libdir }}": "/lib/x86_64-linux-gnu",
}
_DEBUG_LINE = re.compile(r"^sgx\.debug\s*=.*$", re.MULTILINE)


def render(template: str) -> str:
    """``gramine-manifest`` of a template: its placeholders replaced."""
    for placeholder, value in _RENDER.items():
        template = template.replace(placeholder, value)
    if "{{" in template:
        raise ValueError("the template has a placeholder this fake does not render")
    return template


def mrenclave(manifest: str) -> bytes:
    """This fake's MRENCLAVE of a rendered manifest (see the module docstring)."""
    doc = tomllib.loads(manifest)
    digest = hashlib.sha256(_DEBUG_LINE.sub("", manifest).encode())
    snapshot = Path(doc["loader"]["argv"][5])
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(snapshot)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.digest()


def sign(template: str, out: Path, entry: str, *, debug: bool = False) -> str:
    """Render and "sign" ``template`` into ``out``; MRENCLAVE (hex)."""
    manifest = render(template)
    if debug:
        manifest = _DEBUG_LINE.sub("sgx.debug = true", manifest)
    value = mrenclave(manifest)
    sigstruct = bytearray(_SIGSTRUCT_BYTES)
    sigstruct[_ENCLAVEHASH] = value
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{entry}.manifest.sgx").write_text(manifest)
    (out / f"{entry}.sig").write_bytes(bytes(sigstruct))
    return value.hex()


def _enclave_env(doc: dict[str, object], host: dict[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    loader = doc.get("loader", {})
    assert isinstance(loader, dict)
    for name, value in dict(loader.get("env", {})).items():
        if isinstance(value, dict):
            if value.get("passthrough") and name in host:
                env[name] = host[name]
        else:
            env[name] = str(value)
    return env


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="fake gramine-sgx")
    parser.add_argument("--platform", required=True)
    parser.add_argument("--cpu-secret", required=True)
    parser.add_argument("entry")
    options = parser.parse_args()
    entry = options.entry
    here = Path.cwd()
    manifest = (here / f"{entry}.manifest.sgx").read_text()
    signed = (here / f"{entry}.sig").read_bytes()[_ENCLAVEHASH]
    measured = mrenclave(manifest)
    if measured != signed:
        sys.stderr.write("fake gramine-sgx: EINIT failed: the enclave is not what was signed\n")
        return 1
    doc = tomllib.loads(manifest)
    debug = bool(doc.get("sgx", {}).get("debug", False))
    host = dict(os.environ)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dcap import DcapPlatform
    from gramine import FakeGramine

    platform = DcapPlatform.from_json(Path(options.platform).read_text())
    fake_dir = Path(tempfile.mkdtemp(prefix="fake-attestation-"))
    atexit.register(shutil.rmtree, fake_dir, True)
    fake = FakeGramine(
        fake_dir,
        mrenclave=measured,
        cpu_secret=bytes.fromhex(options.cpu_secret),
        make_quote=lambda rd: platform.sgx_quote(rd, mrenclave=measured, debug=debug),
    )
    fake.__enter__()
    sys.path.pop(0)
    env = _enclave_env(doc, host)
    env["SEALSERVE_TEE_GRAMINE_DIR"] = str(fake_dir)
    os.environ.clear()
    os.environ.update(env)
    argv = [str(a) for a in doc["loader"]["argv"]]  # python -I -B -c BOOT snapshot module
    command = argv[4]
    sys.argv = ["-c", *argv[5:]]
    exec(compile(command, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
