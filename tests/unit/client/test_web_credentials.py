"""The browser client's credentials file: its form, and ``sealserve user web-credentials``."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealserve.cli import app
from sealserve.client import WEB_CREDENTIALS_KIND, web_credentials
from sealserve.crypto import Identity, RequestKey

OWNER = "a" * 64


def test_the_document_carries_the_ids_and_the_root_key() -> None:
    key = RequestKey.generate()
    user = Identity.generate().principal_id
    doc = json.loads(web_credentials(user_id=user, model_id=f"{OWNER}/m", request_key=key))
    assert doc["kind"] == WEB_CREDENTIALS_KIND
    assert doc["version"] == 1
    assert (doc["user_id"], doc["model_id"]) == (user, f"{OWNER}/m")
    raw = base64.urlsafe_b64decode(doc["request_key"] + "=" * (-len(doc["request_key"]) % 4))
    assert RequestKey.from_bytes(raw) == key


@pytest.mark.parametrize(("user", "model"), [("x", f"{OWNER}/m"), ("b" * 64, "no-owner")])
def test_bad_ids_are_refused(user: str, model: str) -> None:
    with pytest.raises(ValueError, match=r"must be|model id"):
        web_credentials(user_id=user, model_id=model, request_key=RequestKey.generate())


def test_the_cli_writes_a_0600_file_from_the_users_key(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    init = runner.invoke(app, ["user", "init", "--data-dir", str(data), "--json"])
    assert init.exit_code == 0, init.output
    user_id = json.loads(init.output)["principal_id"]
    model = f"{OWNER}/mobilenet-v2"
    missing = runner.invoke(app, ["user", "web-credentials", model, "--data-dir", str(data)])
    assert missing.exit_code == 1
    assert "sealserve user request-key" in missing.output
    key = RequestKey.generate()
    key_file = data / "user" / "request-keys" / OWNER / "mobilenet-v2.key"
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(key.to_bytes())
    key_file.chmod(0o600)
    done = runner.invoke(app, ["user", "web-credentials", model, "--data-dir", str(data), "--json"])
    assert done.exit_code == 0, done.output
    path = Path(json.loads(done.output)["path"])
    assert path == data / "user" / "web" / OWNER / "mobilenet-v2.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == web_credentials(user_id=user_id, model_id=model, request_key=key)
    again = runner.invoke(app, ["user", "web-credentials", model, "--data-dir", str(data)])
    assert again.exit_code == 1
    assert "exists" in again.output
