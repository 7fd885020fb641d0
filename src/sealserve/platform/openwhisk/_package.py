"""What deploying a sealserve instance as an OpenWhisk blackbox action needs, as files.

::

    files = write_package(Path("ow"), OpenWhiskOptions.from_settings(
        settings, keyservice_url="https://ks.example:8470", keyservice_measurement=hex_))

writes ``Dockerfile``, ``entrypoint.sh``, ``manifest.yaml`` (wskdeploy), ``deploy.sh`` (the
same with ``wsk``) and ``README.md``.  The image runs ``sealserve instance serve --port 8080``
(the action contract) after starting the simulated TEE platform daemon in the container, which
launches and measures the runtime as on the local platform.  The simulated platform's key is a
secret mounted into the container (the KeyService must trust it); a real TEE needs an image
built for it (docs/platforms.md).  Nothing written here is secret: the files name the
KeyService and its measurement, never a key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import shutil
from pathlib import Path
from typing import Final

from sealserve import __version__
from sealserve.config import Settings

__all__ = ["OpenWhiskOptions", "write_package"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HEX = re.compile(r"[0-9a-f]{64}")
_DATA: Final = "/var/lib/sealserve"
_KEY_SECRET: Final = "/run/secrets/sealserve-platform-key"  # noqa: S105 - a path, not a secret
_SOCKET: Final = "/tmp/sealserve-tee/tee.sock"  # noqa: S108 - inside the container, its own /tmp


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpenWhiskOptions:
    """One action: its names, image, limits and the instance's settings.

    ``memory_mb`` is the action's memory limit (the instance's billed memory),
    ``timeout_ms`` its time limit, ``concurrency`` the activations one container serves at
    once (OpenWhisk's intra-container concurrency; the host admits as many).
    ``requirement`` is what ``pip`` installs in the image, unless ``wheel`` (a file name in the
    package directory) is given.
    """

    keyservice_url: str
    keyservice_measurement: str
    action: str = "sealed-instance"
    package: str = "sealserve"
    image: str = f"sealserve-instance:{__version__}"
    memory_mb: int = 2048
    timeout_ms: int = 60_000
    concurrency: int = 4
    memory_budget_mb: int = 1024
    memory_factor: float = 4.0
    threads: int = 2
    max_body_mb: int = 64
    requirement: str = f"sealserve[models]=={__version__}"
    wheel: str | None = None

    def __post_init__(self) -> None:
        if not self.keyservice_url.startswith(("http://", "https://")):
            raise ValueError(f"keyservice_url must be an http(s) URL, got {self.keyservice_url!r}")
        if any(c.isspace() or c in "'\"\\$`" for c in self.keyservice_url):
            raise ValueError(f"keyservice_url has a character it may not: {self.keyservice_url!r}")
        if not _HEX.fullmatch(self.keyservice_measurement):
            raise ValueError(
                "keyservice_measurement must be 64 lowercase hex digits, "
                f"got {self.keyservice_measurement!r}"
            )
        for name in ("action", "package"):
            if not _NAME.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} is not an OpenWhisk name: {getattr(self, name)!r}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]*", self.image):
            raise ValueError(f"image is not a Docker image reference: {self.image!r}")
        for name in ("memory_mb", "timeout_ms", "concurrency", "memory_budget_mb", "threads",
                     "max_body_mb"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.memory_budget_mb >= self.memory_mb:
            raise ValueError(
                f"memory_budget_mb ({self.memory_budget_mb}) must be less than memory_mb "
                f"({self.memory_mb}): the host and the runtime live in the container too"
            )
        if not self.memory_factor >= 1.0 or math.isinf(self.memory_factor):
            raise ValueError(
                f"memory_factor must be a finite number >= 1, got {self.memory_factor!r}"
            )
        if self.wheel is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]+\.whl", self.wheel):
            raise ValueError(f"wheel must be a wheel's file name, got {self.wheel!r}")
        if any(c.isspace() or c in "'\"\\$`" for c in self.requirement):
            raise ValueError(f"requirement has a character it may not: {self.requirement!r}")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        keyservice_url: str,
        keyservice_measurement: str,
        **options: object,
    ) -> OpenWhiskOptions:
        """The action of ``[platform]``, ``[runtime]`` and ``[gateway]``: memory is the
        instance's memory, concurrency the instance's, the timeout the gateway's deadline."""
        values: dict[str, object] = {
            "keyservice_url": keyservice_url,
            "keyservice_measurement": keyservice_measurement,
            "memory_mb": settings.platform.instance_memory_mb,
            "timeout_ms": math.ceil(settings.gateway.request_timeout_s * 1000),
            "concurrency": settings.platform.instance_concurrency,
            "memory_budget_mb": settings.runtime.memory_budget_for(settings.platform),
            "threads": settings.runtime.threads,
            "max_body_mb": max(1, -(-settings.gateway.max_body_bytes // (1 << 20))),
        }
        values.update(options)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000


def write_package(
    out_dir: Path,
    options: OpenWhiskOptions,
    *,
    wheel_file: Path | None = None,
    store_dir: Path | None = None,
) -> list[Path]:
    """Write the package into ``out_dir`` (created; files already there are replaced).

    ``wheel_file`` is copied in and installed instead of ``options.requirement``;
    ``store_dir`` (sealed models only: ciphertext) is copied into the image's model store.
    Returns the files written.
    """
    if not isinstance(options, OpenWhiskOptions):
        raise TypeError(f"options must be OpenWhiskOptions, got {type(options).__name__}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if wheel_file is not None:
        if not wheel_file.is_file():
            raise ValueError(f"wheel_file {str(wheel_file)!r} is not a file")
        options = dataclasses.replace(options, wheel=wheel_file.name)
        shutil.copyfile(wheel_file, out_dir / wheel_file.name)
    store = out_dir / "store"
    if store.exists():
        shutil.rmtree(store)
    if store_dir is not None:
        if not store_dir.is_dir():
            raise ValueError(f"store_dir {str(store_dir)!r} is not a directory")
        shutil.copytree(store_dir, store)
    else:
        store.mkdir()
        (store / ".keep").write_text("")
    files = {
        "Dockerfile": _dockerfile(options),
        "entrypoint.sh": _entrypoint(options),
        "manifest.yaml": _manifest(options),
        "deploy.sh": _deploy(options),
        "README.md": _readme(options),
    }
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written


def _dockerfile(o: OpenWhiskOptions) -> str:
    if o.wheel is not None:
        install = (
            f"COPY {o.wheel} /tmp/\n"
            f"RUN pip install --no-cache-dir /tmp/{o.wheel} && rm /tmp/{o.wheel}"
        )
    else:
        install = f'RUN pip install --no-cache-dir "{o.requirement}"'
    return f"""\
# sealserve instance as an OpenWhisk blackbox action
# (written by `sealserve platform openwhisk package`; sealserve {__version__}).
# The untrusted host answers the action contract on 8080; the sealed runtime is launched and
# measured by the simulated TEE platform daemon that the entrypoint starts in the container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    SEALSERVE_KEYSERVICE_URL={o.keyservice_url} \\
    SEALSERVE_KEYSERVICE_MEASUREMENT={o.keyservice_measurement}

{install}

RUN useradd --system --uid 10001 --home-dir {_DATA} sealserve \\
    && mkdir -p {_DATA}/tee \\
    && chown -R sealserve {_DATA} \\
    && chmod 0700 {_DATA}/tee
# Sealed models (ciphertext only) baked into the image's model store.
COPY --chown=sealserve store/ {_DATA}/store/
COPY entrypoint.sh /usr/local/bin/sealserve-action
USER sealserve
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sealserve-action"]
"""


def _entrypoint(o: OpenWhiskOptions) -> str:
    serve = [
        "sealserve", "instance", "serve",
        "--store", f"{_DATA}/store",
        "--keyservice", "$SEALSERVE_KEYSERVICE_URL",
        "--keyservice-measurement", "$SEALSERVE_KEYSERVICE_MEASUREMENT",
        "--host", "0.0.0.0",  # noqa: S104 - the action's container port, as OpenWhisk needs
        "--port", "8080",
        "--tee-socket", _SOCKET,
        "--data-dir", _DATA,
        "--platform-key", f"{_DATA}/tee/platform.pub",
        "--memory-budget-mb", str(o.memory_budget_mb),
        "--memory-factor", repr(float(o.memory_factor)),
        "--threads", str(o.threads),
        "--concurrency", str(o.concurrency),
        "--max-body-mb", str(o.max_body_mb),
        "--timeout-s", repr(o.timeout_s),
        "--log-level", "INFO",
    ]  # fmt: skip
    command = " ".join(a if a.startswith("$") else shlex.quote(a) for a in serve)
    command = command.replace("$SEALSERVE_KEYSERVICE_URL", '"$SEALSERVE_KEYSERVICE_URL"')
    command = command.replace(
        "$SEALSERVE_KEYSERVICE_MEASUREMENT", '"$SEALSERVE_KEYSERVICE_MEASUREMENT"'
    )
    return f"""\
#!/bin/sh
# Start the simulated TEE platform daemon, then become the instance host (PID of the action).
set -eu
umask 077
if [ -f {_KEY_SECRET} ]; then
  cp {_KEY_SECRET} {_DATA}/tee/platform.key
  chmod 0600 {_DATA}/tee/platform.key
else
  echo "sealserve: no platform key at {_KEY_SECRET}; the KeyService will not trust this runtime" >&2
fi
mkdir -p "$(dirname {_SOCKET})"
sealserve attest platform serve --socket {_SOCKET} --data-dir {_DATA} --log-level WARNING &
i=0
until [ -S {_SOCKET} ]; do
  i=$((i + 1))
  if [ "$i" -gt 600 ]; then echo "sealserve: the TEE platform daemon did not start" >&2; exit 1; fi
  sleep 0.05
done
exec {command}
"""


def _manifest(o: OpenWhiskOptions) -> str:
    return f"""\
# wskdeploy manifest (written by `sealserve platform openwhisk package`).
# Deploy with: wskdeploy -m manifest.yaml   (after pushing the image, see README.md)
packages:
  {o.package}:
    version: {__version__}
    license: Apache-2.0
    actions:
      {o.action}:
        docker: {o.image}
        limits:
          memorySize: {o.memory_mb}
          timeout: {o.timeout_ms}
          concurrentActivations: {o.concurrency}
          logSize: 10
"""


def _deploy(o: OpenWhiskOptions) -> str:
    name = f"{o.package}/{o.action}"
    return f"""\
#!/bin/sh
# The same deployment as manifest.yaml, with the wsk CLI.
set -eu
wsk package update {shlex.quote(o.package)}
wsk action update {shlex.quote(name)} --docker {shlex.quote(o.image)} \\
  --memory {o.memory_mb} --timeout {o.timeout_ms} --concurrency {o.concurrency}
"""


def _readme(o: OpenWhiskOptions) -> str:
    name = f"{o.package}/{o.action}"
    return f"""\
# sealserve instance as an OpenWhisk action

Written by `sealserve platform openwhisk package` (sealserve {__version__}). The action is one
sealserve instance: the untrusted host answers OpenWhisk's action contract on port 8080
(`POST /init` once, `POST /run` with several runs at once), and its sealed runtime, launched
and measured by the TEE platform, is the only process that sees a model, an input or an output
in the clear. OpenWhisk, the image registry and the invoker see ciphertext only.

| limit | value | from |
|---|---|---|
| memory | {o.memory_mb} MB | `platform.instance_memory_mb` |
| timeout | {o.timeout_ms} ms | `gateway.request_timeout_s` |
| concurrency (activations per container) | {o.concurrency} | `platform.instance_concurrency` |
| runtime model budget | {o.memory_budget_mb} MB | `runtime.memory_budget_mb` |

The OpenWhisk deployment must allow these limits (its defaults cap memory at 512 MB and
intra-container concurrency at 1: raise `limit_action_memory_max` and enable concurrency).

## Build and deploy

```sh
docker build -t {o.image} .
docker push {o.image}                     # to a registry your invokers pull from
# simulated TEE only: give the container the platform key the KeyService trusts,
# as a secret mounted at {_KEY_SECRET}
wskdeploy -m manifest.yaml                # or: ./deploy.sh
```

## Invoke

```sh
wsk action invoke {name} --result --param-file run.json
```

where `run.json` is `{{"model_id": "<owner>/<name>", "user_id": "<64 hex>", "request_id":
"<id>", "input": "<sealed input, base64>"}}` (the client seals it with the user's request key:
`sealserve.runtime.seal_input`). The answer's `output` is the sealed output, base64.

## The TEE

The image starts the **simulated** TEE platform daemon (development and CI): it launches the
runtime from a measured snapshot of the installed code and signs its evidence with the
platform key mounted at `{_KEY_SECRET}`. That key is the trust root the KeyService checks:
whoever holds it can forge evidence, so the simulated TEE protects nothing against the
operator of the invoker. On SGX or TDX hardware the runtime must be launched by the real TEE
(an enclave or confidential-VM image, attested with DCAP quotes); this package does not build
such an image.

## Models

`store/` holds sealed models (ciphertext) baked into the image
(`--store` when packaging); the runtime fetches them through the host and unseals them with
keys the KeyService releases only to an attested runtime whose measurement the owner granted.
The KeyService is `{o.keyservice_url}`, pinned to measurement `{o.keyservice_measurement}`.
"""
