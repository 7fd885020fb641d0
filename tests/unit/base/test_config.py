from __future__ import annotations

import math
from pathlib import Path

import pytest

from sealserve.config import GatewaySettings, KeyServiceSettings, Settings, load_settings
from sealserve.errors import ConfigError


def test_defaults_without_file_or_env() -> None:
    s = load_settings(env={})
    assert s == Settings(data_dir=s.data_dir)
    assert s.platform.keep_alive_s == 180.0
    assert s.attest.backend == "simulated"


def test_toml_then_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "sealserve.toml"
    cfg.write_text('log_level = "DEBUG"\n[keyservice]\nport = 9000\nhost = "192.0.2.1"\n')
    s = load_settings(cfg, env={"SEALSERVE_KEYSERVICE_PORT": "9100"})
    assert s.keyservice.port == 9100
    assert s.keyservice.host == "192.0.2.1"
    assert s.log_level == "DEBUG"


def test_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n[platform]\nmax_instances = 7\n')
    s = load_settings(env={"SEALSERVE_CONFIG": str(cfg)})
    assert s.data_dir == tmp_path
    assert s.platform.max_instances == 7


def test_bad_env_value_names_key_source_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"SEALSERVE_KEYSERVICE_PORT": "abc"})
    msg = str(info.value)
    assert "keyservice.port" in msg
    assert "SEALSERVE_KEYSERVICE_PORT" in msg
    assert "'abc'" in msg
    assert "Not a valid int" in msg


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SEALSERVE_KEYSERVICE_PORT": "70000"}, "Not a port"),
        ({"SEALSERVE_PLATFORM_KEEP_ALIVE_S": "-1"}, "greater than zero"),
        ({"SEALSERVE_LOG_LEVEL": "LOUD"}, "log_level"),
        ({"SEALSERVE_ATTEST_BACKEND": "sev"}, "attest.backend"),
        ({"SEALSERVE_RUNTIME_THREADS": "1.5"}, "runtime.threads"),
    ],
)
def test_invalid_values(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env=env)


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_non_finite_numbers_are_refused_with_key_and_value(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"SEALSERVE_KEYSERVICE_CHALLENGE_TTL_S": raw})
    msg = str(info.value)
    assert "keyservice.challenge_ttl_s" in msg
    assert "SEALSERVE_KEYSERVICE_CHALLENGE_TTL_S" in msg
    assert repr(raw) in msg
    assert "Not a finite number" in msg


def test_non_finite_numbers_in_a_file_or_a_constructor_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[platform]\nkeep_alive_s = nan\n")
    with pytest.raises(ConfigError, match=r"'platform.keep_alive_s' .*nan.*Not a finite number"):
        load_settings(cfg, env={})
    for value in (math.nan, math.inf):
        with pytest.raises(ConfigError, match=r"'gateway.request_timeout_s' has value"):
            GatewaySettings(request_timeout_s=value)
        with pytest.raises(ConfigError, match=r"'keyservice.release_ttl_s' has value"):
            KeyServiceSettings(release_ttl_s=value)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[gateway]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"gateway\.prot.*not a known setting"):
        load_settings(cfg, env={})


def test_wrong_type_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[gateway]\nport = "x"\n')
    with pytest.raises(ConfigError, match=r"gateway\.port.*'x'"):
        load_settings(cfg, env={})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[[[")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})


def test_bools_parse(tmp_path: Path) -> None:
    from sealserve.config import _coerce

    assert _coerce(bool, "yes", "k", "env") is True
    assert _coerce(bool, "off", "k", "env") is False
    with pytest.raises(ConfigError):
        _coerce(bool, "maybe", "k", "env")
