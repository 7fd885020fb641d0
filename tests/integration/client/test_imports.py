"""What importing a package loads, in a fresh interpreter: the client stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sealserve.bench.imports import HEAVY_MODULES

pytestmark = pytest.mark.integration

_PROBE = "import json, sys\nimport sealserve.client\nprint(json.dumps(sorted(sys.modules)))\n"


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


def test_the_client_loads_no_server_database_or_runtime_package() -> None:
    loaded = _modules_after(_PROBE)
    assert "sealserve.client" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY_MODULES) == []
    ours = {m.split(".")[1] for m in loaded if m.startswith("sealserve.") and m.count(".") >= 1}
    # the client's packages and the base modules, nothing of the layers above protocol
    # (not _forkserver: attest's simulated platform loads it with its first template)
    assert ours <= {"client", "protocol", "crypto", "attest", "errors", "config", "_clock",
                    "_log", "_lifeline", "_resource", "_tls"}  # fmt: skip


def test_the_probe_sees_a_heavy_import_when_there_is_one() -> None:
    # positive control: the same probe on a module that does load them
    loaded = _modules_after(_PROBE.replace("sealserve.client", "sealserve.keyservice"))
    assert {"fastapi", "sqlalchemy", "starlette"} <= loaded


@pytest.mark.parametrize(
    "module", ["sealserve.keyservice._main", "sealserve.runtime._main", "sealserve.attest._probe"]
)
def test_an_entry_module_is_not_loaded_by_its_package(module: str) -> None:
    # ``python -m package._main`` (how the platform launches an entry) warns, and may
    # misbehave, when the package's __init__ has already imported the module it runs.
    package = module.rsplit(".", 1)[0]
    probe = f"import json, sys\nimport {package}\nprint(json.dumps(sorted(sys.modules)))\n"
    assert module not in _modules_after(probe)
