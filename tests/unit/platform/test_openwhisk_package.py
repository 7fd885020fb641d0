"""The OpenWhisk package: the files a blackbox action needs, with limits from the settings.

No Docker engine and no OpenWhisk run here: the tests read the files.  The entrypoint's
``sealserve instance serve`` line is parsed by the real command, so it names only options the
host has; the action contract itself is tested against the host in tests/unit/instance.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from sealserve._cli.instance import app as instance_app
from sealserve.config import GatewaySettings, PlatformSettings, RuntimeSettings, Settings
from sealserve.platform.openwhisk import OpenWhiskOptions, write_package

MEASUREMENT = "cd" * 32


def settings() -> Settings:
    return Settings(
        platform=PlatformSettings(instance_memory_mb=3072, instance_concurrency=6),
        runtime=RuntimeSettings(memory_budget_mb=1536, threads=3),
        gateway=GatewaySettings(request_timeout_s=45.5, max_body_bytes=10 << 20),
    )


def package(tmp_path: Path, **extra: object) -> Path:
    options = OpenWhiskOptions.from_settings(
        settings(),
        keyservice_url="https://keys.example:8470",
        keyservice_measurement=MEASUREMENT,
        **extra,
    )
    write_package(tmp_path, options)
    return tmp_path


def test_it_writes_the_files_of_a_blackbox_action(tmp_path: Path) -> None:
    out = package(tmp_path)
    assert {p.name for p in out.iterdir()} == {
        "Dockerfile", "entrypoint.sh", "manifest.yaml", "deploy.sh", "README.md", "store"
    }  # fmt: skip
    dockerfile = (out / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile.splitlines()
    assert "EXPOSE 8080" in dockerfile
    assert 'ENTRYPOINT ["/usr/local/bin/sealserve-action"]' in dockerfile
    assert "USER sealserve" in dockerfile
    assert f"SEALSERVE_KEYSERVICE_MEASUREMENT={MEASUREMENT}" in dockerfile
    assert (out / "entrypoint.sh").stat().st_mode & 0o111


def test_the_manifest_and_the_wsk_commands_carry_the_limits_from_the_settings(
    tmp_path: Path,
) -> None:
    out = package(tmp_path, image="registry.example/sealserve:1", action="infer")
    doc = yaml.safe_load((out / "manifest.yaml").read_text())
    action = doc["packages"]["sealserve"]["actions"]["infer"]
    assert action["docker"] == "registry.example/sealserve:1"
    assert action["limits"]["memorySize"] == 3072
    assert action["limits"]["timeout"] == 45_500
    assert action["limits"]["concurrentActivations"] == 6
    deploy = shlex.split((out / "deploy.sh").read_text(), comments=True)
    assert deploy[deploy.index("--docker") + 1] == "registry.example/sealserve:1"
    assert deploy[deploy.index("--memory") + 1] == "3072"
    assert deploy[deploy.index("--timeout") + 1] == "45500"
    assert deploy[deploy.index("--concurrency") + 1] == "6"


def test_the_entrypoint_runs_the_action_contract_with_the_simulated_tee(tmp_path: Path) -> None:
    text = (package(tmp_path) / "entrypoint.sh").read_text()
    assert "sealserve attest platform serve --socket" in text
    exec_line = next(line for line in text.splitlines() if line.startswith("exec "))
    argv = shlex.split(exec_line)[1:]
    assert argv[:3] == ["sealserve", "instance", "serve"]
    values = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert values["--port"] == "8080"
    assert values["--host"] == "0.0.0.0"  # noqa: S104 - the action's port, as OpenWhisk needs
    assert values["--concurrency"] == "6"
    assert values["--memory-budget-mb"] == "1536"
    assert values["--threads"] == "3"
    assert values["--max-body-mb"] == "10"
    assert values["--tee-socket"].endswith("tee.sock")
    # Every option is one the host's command takes, with a value it accepts.
    serve = typer.main.get_command(instance_app).commands["serve"]  # type: ignore[attr-defined]
    args = [a.replace("$SEALSERVE_KEYSERVICE_URL", "https://keys.example:8470") for a in argv[3:]]
    args = [a.replace("$SEALSERVE_KEYSERVICE_MEASUREMENT", MEASUREMENT) for a in args]
    ctx = serve.make_context("serve", args)
    assert ctx.params["port"] == 8080
    assert ctx.params["concurrency"] == 6


def test_a_wheel_and_sealed_models_go_into_the_image(tmp_path: Path) -> None:
    wheel = tmp_path / "sealserve-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK wheel")
    store = tmp_path / "store-src"
    (store / "models").mkdir(parents=True)
    (store / "models" / "m.json").write_text("{}")
    out = tmp_path / "out"
    options = OpenWhiskOptions(keyservice_url="http://k:1", keyservice_measurement=MEASUREMENT)
    write_package(out, options, wheel_file=wheel, store_dir=store)
    dockerfile = (out / "Dockerfile").read_text()
    assert f"COPY {wheel.name} /tmp/" in dockerfile
    assert (out / wheel.name).read_bytes() == b"PK wheel"
    assert (out / "store" / "models" / "m.json").exists()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"keyservice_url": "ftp://k"}, "keyservice_url"),
        ({"keyservice_url": "http://k/$(reboot)"}, "keyservice_url"),
        ({"keyservice_measurement": "xyz"}, "keyservice_measurement"),
        ({"action": "bad name"}, "action"),
        ({"image": "Bad Image"}, "image"),
        ({"memory_mb": 512, "memory_budget_mb": 1024}, "memory_budget_mb"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_options_are_checked(changes: dict[str, object], match: str) -> None:
    base = OpenWhiskOptions(keyservice_url="http://k:1", keyservice_measurement=MEASUREMENT)
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(base, **changes)  # type: ignore[arg-type]
