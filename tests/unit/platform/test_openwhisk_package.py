"""The OpenWhisk package: the files a blackbox action needs, with limits from the settings,
and the container's start: its limits from the action's, the host's command line.

No Docker engine and no OpenWhisk run here: the tests read the files.  The host's command line
is parsed by the real ``sealserve instance serve`` command, so it names only options the host
has; the action contract with that command line is tested against a real host and the node's
TEE daemon in tests/integration/instance/test_openwhisk_action.py.
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
from sealserve.platform.openwhisk import (
    OpenWhiskOptions,
    action_limits,
    host_command,
    read_spec,
    write_package,
)

MEASUREMENT = "cd" * 32
PUBLIC_KEY = "ab" * 32


def wheel_and_key(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    wheel = src / "sealserve-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK wheel")
    key = src / "platform.pub"
    key.write_text(PUBLIC_KEY + "\n")
    return wheel, key


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
    wheel, key = wheel_and_key(tmp_path)
    out = tmp_path / "out"
    write_package(out, options, wheel_file=wheel, platform_key_file=key)
    return out


def test_it_writes_the_files_of_a_blackbox_action(tmp_path: Path) -> None:
    out = package(tmp_path)
    assert {p.name for p in out.iterdir()} == {
        "Dockerfile", "entrypoint.sh", "action.json", "platform.pub", "manifest.yaml",
        "deploy.sh", "README.md", "store", "sealserve-0.1.0-py3-none-any.whl",
    }  # fmt: skip
    dockerfile = (out / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile.splitlines()
    assert "EXPOSE 8080" in dockerfile
    assert 'ENTRYPOINT ["/usr/local/bin/sealserve-action"]' in dockerfile
    assert "USER sealserve" in dockerfile
    # sealserve from its own wheel, never from a package index
    assert "COPY sealserve-0.1.0-py3-none-any.whl /tmp/" in dockerfile
    assert "RUN pip install --no-cache-dir /tmp/sealserve-0.1.0-py3-none-any.whl" in dockerfile
    assert "sealserve[" not in dockerfile
    assert "sealserve==" not in dockerfile
    assert (out / "entrypoint.sh").stat().st_mode & 0o111
    assert (out / "platform.pub").read_text() == PUBLIC_KEY + "\n"


def test_no_key_goes_into_the_image_and_no_tee_daemon_runs_in_the_container(
    tmp_path: Path,
) -> None:
    out = package(tmp_path)
    texts = {p.name: p.read_text() for p in out.iterdir() if p.is_file() and p.suffix != ".whl"}
    for name, text in texts.items():
        assert "platform.key" not in text, name
        assert "/run/secrets" not in text, name
        assert "attest platform serve --socket" not in text or name == "README.md", name
    entrypoint = shlex.split(texts["entrypoint.sh"], comments=True)
    assert entrypoint[entrypoint.index("exec") + 1 :][:4] == [
        "sealserve", "platform", "openwhisk", "run"
    ]  # fmt: skip
    spec = read_spec(out / "action.json")
    assert spec.tee_socket == "/run/sealserve/tee.sock"  # the node's daemon, mounted


def test_a_private_key_is_refused_as_the_platform_key(tmp_path: Path) -> None:
    wheel, _ = wheel_and_key(tmp_path)
    private = tmp_path / "platform.key"
    private.write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI...\n")
    options = OpenWhiskOptions(keyservice_url="http://k:1", keyservice_measurement=MEASUREMENT)
    with pytest.raises(ValueError, match="not a platform public key"):
        write_package(tmp_path / "out", options, wheel_file=wheel, platform_key_file=private)
    assert not (tmp_path / "out").exists()


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


def cgroup(tmp_path: Path, *, v2: str | None = None, v1: str | None = None) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir(exist_ok=True)
    if v2 is not None:
        (root / "memory.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "memory").mkdir(exist_ok=True)
        (root / "memory" / "memory.limit_in_bytes").write_text(v1 + "\n")
    return root


def spec(tmp_path: Path) -> OpenWhiskOptions:
    return read_spec(package(tmp_path) / "action.json")


@pytest.mark.parametrize(
    ("v2", "v1", "memory", "budget", "source"),
    [
        (str(4096 << 20), None, 4096, 2560, "cgroup v2 memory.max"),
        (None, str(2048 << 20), 2048, 512, "cgroup v1 memory.limit_in_bytes"),
        ("max", None, 3072, 1536, "the package (cgroup v2 (no limit))"),
        (None, str(1 << 62), 3072, 1536, "the package (cgroup v1 (no limit))"),
        (None, None, 3072, 1536, "the package (no memory cgroup)"),
    ],
)
def test_the_budget_follows_the_actions_memory_limit(
    tmp_path: Path, v2: str | None, v1: str | None, memory: int, budget: int, source: str
) -> None:
    options = spec(tmp_path)  # packaged: 3072 MB, 1536 for models: a 1536 MB reserve
    limits = action_limits(options, env={}, cgroup_root=cgroup(tmp_path, v2=v2, v1=v1))
    assert (limits.memory_mb, limits.budget_mb, limits.memory_from) == (memory, budget, source)


def test_a_limit_too_small_for_the_reserve_is_refused_with_the_fix(tmp_path: Path) -> None:
    options = spec(tmp_path)
    root = cgroup(tmp_path, v2=str(256 << 20))  # a bare `wsk action create`
    with pytest.raises(ValueError, match=r"256 MB .*--memory 3072"):
        action_limits(options, env={}, cgroup_root=root)


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"__OW_ALLOW_CONCURRENT": "true"}, 6),
        ({"__OW_ALLOW_CONCURRENT": "True"}, 6),
        ({"__OW_ALLOW_CONCURRENT": "false"}, 1),
        ({}, 1),
    ],
)
def test_the_concurrency_follows_what_the_invoker_allows(
    tmp_path: Path, env: dict[str, str], want: int
) -> None:
    limits = action_limits(spec(tmp_path), env=env, cgroup_root=cgroup(tmp_path, v2="max"))
    assert limits.concurrency == want


def test_the_hosts_command_line_is_one_the_host_takes(tmp_path: Path) -> None:
    options = spec(tmp_path)
    limits = action_limits(
        options,
        env={"__OW_ALLOW_CONCURRENT": "true"},
        cgroup_root=cgroup(tmp_path, v2=str(2560 << 20)),
    )
    argv = host_command(
        options,
        limits,
        python="python3",
        data_dir=Path("/var/lib/sealserve"),
        store_dir=Path("/var/lib/sealserve/store"),
        platform_key=Path("/etc/sealserve/platform.pub"),
    )
    assert argv[:5] == ["python3", "-m", "sealserve", "instance", "serve"]
    values = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert values["--port"] == "8080"
    assert values["--host"] == "0.0.0.0"  # noqa: S104 - the action's port, as OpenWhisk needs
    assert values["--concurrency"] == "6"
    assert values["--memory-budget-mb"] == "1024"  # 2560 less the packaged 1536 reserve
    assert values["--threads"] == "3"
    assert values["--max-body-mb"] == "10"
    assert values["--tee-socket"] == "/run/sealserve/tee.sock"
    assert values["--platform-key"] == "/etc/sealserve/platform.pub"
    assert values["--keyservice-measurement"] == MEASUREMENT
    # Every option is one the host's command takes, with a value it accepts.
    serve = typer.main.get_command(instance_app).commands["serve"]  # type: ignore[attr-defined]
    ctx = serve.make_context("serve", argv[5:])
    assert ctx.params["port"] == 8080
    assert ctx.params["concurrency"] == 6


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("[]", "not a JSON object"),
        ("{", "cannot read"),
        ('{"keyservice_url": "http://k:1", "keyservice_measurement": "' + "cd" * 32
         + '", "api_key": "x"}', "unknown fields"),
        ('{"keyservice_url": "http://k:1", "keyservice_measurement": "' + "cd" * 32
         + '", "tee_socket": "../x"}', "tee_socket"),
    ],
)  # fmt: skip
def test_a_hostile_spec_is_refused(tmp_path: Path, doc: str, match: str) -> None:
    path = tmp_path / "action.json"
    path.write_text(doc)
    with pytest.raises(ValueError, match=match):
        read_spec(path)


def test_a_wheel_and_sealed_models_go_into_the_image(tmp_path: Path) -> None:
    wheel, key = wheel_and_key(tmp_path)
    store = tmp_path / "store-src"
    (store / "models").mkdir(parents=True)
    (store / "models" / "m.json").write_text("{}")
    out = tmp_path / "out"
    options = OpenWhiskOptions(keyservice_url="http://k:1", keyservice_measurement=MEASUREMENT)
    write_package(out, options, wheel_file=wheel, platform_key_file=key, store_dir=store)
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
        ({"tee_socket": "relative/tee.sock"}, "tee_socket"),
        ({"tee_socket": "/run/$(x)"}, "tee_socket"),
    ],
)
def test_options_are_checked(changes: dict[str, object], match: str) -> None:
    base = OpenWhiskOptions(keyservice_url="http://k:1", keyservice_measurement=MEASUREMENT)
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(base, **changes)  # type: ignore[arg-type]
