"""The action's own start: its limits from what OpenWhisk gives the container, then the host.

``sealserve platform openwhisk run`` is the image's entrypoint.  It reads the action's spec
(``/etc/sealserve/action.json``, written by :func:`~sealserve.platform.openwhisk.write_package`:
the KeyService, its pin, the packaged limits; nothing secret), works out what this container
may use, and becomes ``sealserve instance serve`` on port 8080 (the action contract).

What OpenWhisk tells a blackbox container (its action contract: ``/init`` carries the action's
name, entry point, code and the init-time environment of ``__OW_*`` context variables and
init parameters; ``/run`` the activation's value and context; neither names the limits):

* **memory**: the invoker starts the container with the action's memory limit as its memory
  cgroup (``docker run --memory``); :func:`action_limits` reads it (cgroup v2 ``memory.max``,
  or v1 ``memory.limit_in_bytes``) and sizes the runtime's model budget from it, keeping the
  packaged reserve for the host and the runtime.  A container without a limit (``max``) uses
  the packaged memory.  A limit too small for the reserve and a minimal budget (a bare
  ``wsk action create`` gets 256 MB) is refused with the command that fixes it.
* **concurrency**: activations overlap in a container only where the invoker allows it
  (``__OW_ALLOW_CONCURRENT=true`` in the container's environment); then the host admits the
  packaged concurrency (the manifest's ``concurrentActivations``), else one at a time.

The evidence comes from the node: the host launches its runtime through the TEE platform
daemon of the node the container runs on (``--tee-socket``, the node's socket mounted into the
container), which launches and measures the runtime and is the only holder of its key.  No key
is ever placed in the container; the image holds the public key that pins the KeyService.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sealserve.platform.openwhisk._package import OpenWhiskOptions

__all__ = ["ActionLimits", "action_limits", "host_command", "read_spec"]

#: The smallest model budget an action may run with (MB).
MIN_BUDGET_MB: Final = 64
_CGROUP: Final = Path("/sys/fs/cgroup")
#: A cgroup v1 "no limit" is a huge page-aligned number; anything above this is no limit.
_UNLIMITED_BYTES: Final = 1 << 50


@dataclasses.dataclass(frozen=True, slots=True)
class ActionLimits:
    """What this container's instance runs with, and where each figure came from."""

    memory_mb: int
    budget_mb: int
    concurrency: int
    memory_from: str
    concurrency_from: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cgroup_memory_bytes(root: Path) -> tuple[int | None, str]:
    """The container's memory limit in bytes (``None``: none) and which file said so."""
    v2 = root / "memory.max"
    try:
        text = v2.read_text(encoding="ascii").strip()
    except OSError:
        pass
    else:
        if text == "max":
            return None, "cgroup v2 (no limit)"
        if text.isdigit():
            return int(text), "cgroup v2 memory.max"
    v1 = root / "memory" / "memory.limit_in_bytes"
    try:
        text = v1.read_text(encoding="ascii").strip()
    except OSError:
        return None, "no memory cgroup"
    if text.isdigit() and int(text) < _UNLIMITED_BYTES:
        return int(text), "cgroup v1 memory.limit_in_bytes"
    return None, "cgroup v1 (no limit)"


def action_limits(
    options: OpenWhiskOptions, *, env: Mapping[str, str], cgroup_root: Path = _CGROUP
) -> ActionLimits:
    """This container's memory, model budget and concurrency (see the module docstring).

    Raises ``ValueError`` (with the fix) when the action's memory limit leaves no budget.
    """
    limit, memory_from = _cgroup_memory_bytes(cgroup_root)
    if limit is None:
        memory_mb = options.memory_mb
        memory_from = f"the package ({memory_from})"
    else:
        memory_mb = limit >> 20
    reserve = options.memory_mb - options.memory_budget_mb
    budget = memory_mb - reserve
    if budget < MIN_BUDGET_MB:
        raise ValueError(
            f"the action's memory limit is {memory_mb} MB ({memory_from}): the host and the "
            f"runtime keep {reserve} MB and models need at least {MIN_BUDGET_MB} MB; give the "
            f"action more, e.g. wsk action update {options.package}/{options.action} "
            f"--memory {options.memory_mb}"
        )
    allowed = env.get("__OW_ALLOW_CONCURRENT", "").strip().lower() == "true"
    if allowed:
        concurrency, concurrency_from = options.concurrency, "__OW_ALLOW_CONCURRENT=true"
    else:
        concurrency, concurrency_from = 1, "no __OW_ALLOW_CONCURRENT: one activation at a time"
    return ActionLimits(
        memory_mb=memory_mb,
        budget_mb=budget,
        concurrency=concurrency,
        memory_from=memory_from,
        concurrency_from=concurrency_from,
    )


def read_spec(path: Path) -> OpenWhiskOptions:
    """The action's spec as the package wrote it (checked again: the file is outside us)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the action spec {str(path)!r}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"the action spec {str(path)!r} is not a JSON object")
    fields = {f.name for f in dataclasses.fields(OpenWhiskOptions)}
    unknown = sorted(set(doc) - fields)
    if unknown:
        raise ValueError(f"the action spec {str(path)!r} has unknown fields: {unknown}")
    return OpenWhiskOptions(**doc)


def host_command(
    options: OpenWhiskOptions,
    limits: ActionLimits,
    *,
    python: str,
    data_dir: Path,
    store_dir: Path,
    platform_key: Path,
    port: int = 8080,
    host: str = "0.0.0.0",  # noqa: S104 - the action's container port, as OpenWhisk needs
    ready_file: Path | None = None,
) -> list[str]:
    """The ``sealserve instance serve`` command line of this container."""
    ready = [] if ready_file is None else ["--ready-file", str(ready_file)]
    return [
        python, "-m", "sealserve", "instance", "serve",
        "--store", str(store_dir),
        "--keyservice", options.keyservice_url,
        "--keyservice-measurement", options.keyservice_measurement,
        "--host", host,
        "--port", str(port),
        "--tee-socket", options.tee_socket,
        "--data-dir", str(data_dir),
        "--platform-key", str(platform_key),
        "--memory-budget-mb", str(limits.budget_mb),
        "--memory-factor", repr(float(options.memory_factor)),
        "--threads", str(options.threads),
        "--concurrency", str(limits.concurrency),
        "--max-body-mb", str(options.max_body_mb),
        "--timeout-s", repr(options.timeout_s),
        "--log-level", "INFO",
        *ready,
    ]  # fmt: skip
