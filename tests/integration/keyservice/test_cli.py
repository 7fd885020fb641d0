"""The CLI end to end: ``sealserve keyservice serve`` (a real process launching through its
embedded platform), then owner and user commands, then a release to a simulated runtime."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from sealserve.attest import Policy, TrustAnchors
from sealserve.attest.tee import SimulatedPlatform
from sealserve.cli import app
from sealserve.client import KeyServicePin
from sealserve.errors import AccessDenied
from tests.integration.keyservice.simruntime import SimulatedRuntime, probe_measurement


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, measurement: str) -> None:
        self.proc, self.url, self.measurement = proc, url, measurement


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    env = {**os.environ, "SEALSERVE_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sealserve", "keyservice", "serve", "--data-dir", str(tmp_path),
         "--port", "0", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and b"Ctrl-C" not in buffer:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
    lines = [ln.strip() for ln in buffer.decode().splitlines()]
    text = "\n".join(lines)
    assert "KeyService listening on http://127.0.0.1:" in text, text
    url = lines[0].split()[-1]
    measurement = next(ln.split()[-1] for ln in lines if ln.startswith("measurement"))
    try:
        yield Served(proc, url, measurement)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the parent stops the KeyService it launched
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate(timeout=30)


def test_serve_then_the_whole_flow_through_the_cli(served: Served, tmp_path: Path) -> None:
    runner = CliRunner()
    pin_opts = ["--keyservice", served.url, "--data-dir", str(tmp_path),
                "--keyservice-measurement", served.measurement]  # fmt: skip

    def run(*args: str) -> dict[str, object]:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        assert isinstance(doc, dict)
        return doc

    owner_id = str(run("owner", "init", "--data-dir", str(tmp_path))["principal_id"])
    user_id = str(run("user", "init", "--data-dir", str(tmp_path))["principal_id"])
    assert run("owner", "register", *pin_opts)["created"] is True
    assert run("user", "register", *pin_opts)["created"] is True
    put = run("owner", "put-key", "resnet", *pin_opts)
    assert put["version"] == 1
    assert Path(str(put["key_file"])).stat().st_mode & 0o777 == 0o600

    with SimulatedPlatform(data_dir=tmp_path) as platform:  # the same platform key as serve's
        probe = probe_measurement(platform)
        run("owner", "grant", "resnet", user_id, "--measurement", probe, *pin_opts)
        model_id = f"{owner_id}/resnet"
        rk = run("user", "request-key", model_id, "--measurement", probe, *pin_opts)
        assert rk["version"] == 1
        shown = run("owner", "show", "resnet", *pin_opts)
        assert shown["grants"] == [user_id]

        pin = KeyServicePin(
            policy=Policy(measurements=frozenset({served.measurement})),
            trust=TrustAnchors.from_data_dir(tmp_path),
        )
        runtime = SimulatedRuntime(platform=platform, url=served.url, pin=pin)
        try:
            keys = runtime.release([(user_id, model_id)]).keys[(user_id, model_id)]
            assert keys.model_key.to_bytes() == Path(str(put["key_file"])).read_bytes()
            assert keys.request_key.to_bytes() == Path(str(rk["key_file"])).read_bytes()
            run("owner", "revoke", "resnet", user_id, *pin_opts)
            with pytest.raises(AccessDenied):
                runtime.release([(user_id, model_id)])
        finally:
            runtime.close()

    # errors are one line and a non-zero exit, not a traceback
    again = runner.invoke(app, ["owner", "revoke", "resnet", user_id, *pin_opts])
    assert again.exit_code == 1
    assert again.output.startswith("error: no grant")
    wrong_pin = runner.invoke(
        app, ["owner", "register", "--keyservice", served.url, "--data-dir", str(tmp_path),
              "--keyservice-measurement", "ab" * 32],
    )  # fmt: skip
    assert (wrong_pin.exit_code, wrong_pin.output.strip()) == (1, "error: attestation failed")
    assert "Traceback" not in wrong_pin.output

    # SIGTERM stops it cleanly
    served.proc.send_signal(signal.SIGTERM)
    out, _ = served.proc.communicate(timeout=30)
    assert served.proc.returncode == 0
    assert b"KeyService stopped." in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(served.url + "/healthz", timeout=2)


def test_put_key_rotate_through_the_cli(served: Served, tmp_path: Path) -> None:
    """``owner put-key NAME --rotate`` stores the next version (docs/keyservice.md: current + 1,
    the revocation epoch goes up) under a new key file; the next release carries the new key
    and version, never the old key; a second put-key without --rotate is refused."""
    runner = CliRunner()
    pin_opts = ["--keyservice", served.url, "--data-dir", str(tmp_path),
                "--keyservice-measurement", served.measurement]  # fmt: skip

    def run(*args: str) -> dict[str, object]:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        assert isinstance(doc, dict)
        return doc

    owner_id = str(run("owner", "init", "--data-dir", str(tmp_path))["principal_id"])
    user_id = str(run("user", "init", "--data-dir", str(tmp_path))["principal_id"])
    run("owner", "register", *pin_opts)
    run("user", "register", *pin_opts)
    model_id = f"{owner_id}/resnet"
    first = run("owner", "put-key", "resnet", *pin_opts)
    assert first["version"] == 1

    with SimulatedPlatform(data_dir=tmp_path) as platform:
        probe = probe_measurement(platform)
        run("owner", "grant", "resnet", user_id, "--measurement", probe, *pin_opts)
        run("user", "request-key", model_id, "--measurement", probe, *pin_opts)
        pin = KeyServicePin(
            policy=Policy(measurements=frozenset({served.measurement})),
            trust=TrustAnchors.from_data_dir(tmp_path),
        )
        runtime = SimulatedRuntime(platform=platform, url=served.url, pin=pin)
        try:
            before = runtime.release([(user_id, model_id)])
            old = before.keys[(user_id, model_id)]
            old_key = Path(str(first["key_file"])).read_bytes()
            assert (old.model_key.to_bytes(), old.model_key_version) == (old_key, 1)

            rotated = run("owner", "put-key", "resnet", "--rotate", *pin_opts)
            assert rotated["version"] == 2
            assert int(str(rotated["revocation_epoch"])) > int(str(first["revocation_epoch"]))
            assert rotated["key_file"] != first["key_file"]
            new_key = Path(str(rotated["key_file"])).read_bytes()
            assert new_key != old_key
            assert run("owner", "show", "resnet", *pin_opts)["key_version"] == 2

            after = runtime.release([(user_id, model_id)])
            new = after.keys[(user_id, model_id)]
            assert (new.model_key.to_bytes(), new.model_key_version) == (new_key, 2)
            assert after.revocation_epoch > before.revocation_epoch
            assert new.request_key.to_bytes() == old.request_key.to_bytes()  # untouched
        finally:
            runtime.close()

    again = runner.invoke(app, ["owner", "put-key", "resnet", *pin_opts])
    assert again.exit_code == 1
    assert again.output.startswith(f"error: model {model_id} already has a key; use --rotate")


def test_owner_audit_verify_through_the_cli(served: Served, tmp_path: Path) -> None:
    """``sealserve owner audit --verify``: verifies, keeps the checkpoint, and exits 1 saying
    what when the database's history was rewritten (issue 10, item 8)."""
    import sqlalchemy as sa

    runner = CliRunner()
    pin_opts = ["--keyservice", served.url, "--data-dir", str(tmp_path),
                "--keyservice-measurement", served.measurement]  # fmt: skip

    def run(*args: str) -> dict[str, object]:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        assert isinstance(doc, dict)
        return doc

    run("owner", "init", "--data-dir", str(tmp_path))
    run("owner", "register", *pin_opts)
    run("owner", "put-key", "resnet", *pin_opts)
    first = run("owner", "audit", "--verify", *pin_opts)
    assert [e["event"] for e in first["entries"]] == ["register", "put_model_key"]  # type: ignore[index]
    kept = tmp_path / "owner" / "audit-checkpoints.json"
    assert json.loads(kept.read_text())[first["keyservice_id"]] == first["checkpoint"]
    again = run("owner", "audit", "--verify", *pin_opts)
    assert again["since"] == first["checkpoint"]
    assert again["verified"] == 0

    engine = sa.create_engine(f"sqlite+pysqlite:///{tmp_path / 'keyservice' / 'keyservice.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER audit_log_no_update")
            conn.exec_driver_sql("UPDATE audit_log SET detail = 'user' WHERE event = 'register'")
    finally:
        engine.dispose()
    tampered = runner.invoke(app, ["owner", "audit", "--verify", "--full", *pin_opts])
    assert tampered.exit_code == 1
    assert tampered.output.startswith("error: the audit log does not verify:")
    assert "altered" in tampered.output
    assert "Traceback" not in tampered.output
