"""What deploying a sealserve instance as an OpenWhisk blackbox action needs, as files.

::

    files = write_package(Path("ow"), OpenWhiskOptions.from_settings(
        settings, keyservice_url="https://ks.example:8470", keyservice_measurement=hex_))

writes ``Dockerfile``, ``entrypoint.sh``, ``action.json`` (the action's spec),
``platform.pub``, ``manifest.yaml`` (wskdeploy), ``deploy.sh`` (the same with ``wsk``) and
``README.md``, beside the sealserve wheel the image installs (the repository's own: nothing is
installed from a package index but sealserve's dependencies).  The image's entrypoint is
``sealserve platform openwhisk run`` (:mod:`._action`): it takes the model budget and the
concurrency from the action's limits as OpenWhisk gives them to the container, and becomes
``sealserve instance serve --port 8080`` (the action contract), whose runtime the *node's* TEE
platform daemon launches and measures (its socket mounted into the container): the evidence
comes from the node's TEE, and no key is ever in the image or the container.  Nothing written
here is secret: the files name the KeyService, its measurement and the public key that pins
it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

from sealserve import __version__
from sealserve.config import Settings

__all__ = ["OpenWhiskOptions", "write_package"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HEX = re.compile(r"[0-9a-f]{64}")
_DATA: Final = "/var/lib/sealserve"
#: Where the image keeps the action's spec and the public key that pins the KeyService.
SPEC_PATH: Final = "/etc/sealserve/action.json"
PLATFORM_KEY_PATH: Final = "/etc/sealserve/platform.pub"
#: The uid the host runs as in the container (the node's daemon socket must let it connect).
ACTION_UID: Final = 10001


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpenWhiskOptions:
    """One action: its names, image, limits and the instance's settings.

    ``memory_mb`` is the action's memory limit (the instance's billed memory),
    ``timeout_ms`` its time limit, ``concurrency`` the activations one container serves at
    once (OpenWhisk's intra-container concurrency; the host admits as many).  These are what
    the manifest asks for; in the container the budget and the concurrency follow the limits
    the action really has (:func:`~sealserve.platform.openwhisk.action_limits`), keeping the
    reserve ``memory_mb - memory_budget_mb``.  ``wheel`` is the sealserve wheel's file name in
    the package directory (set by :func:`write_package`); ``tee_socket`` is where the node's
    TEE platform daemon socket is mounted in the container.
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
    tee_socket: str = "/run/sealserve/tee.sock"
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
        if not re.fullmatch(r"/[A-Za-z0-9_./-]+", self.tee_socket) or ".." in self.tee_socket:
            raise ValueError(f"tee_socket must be an absolute path, got {self.tee_socket!r}")

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
    wheel_file: Path,
    platform_key_file: Path,
    store_dir: Path | None = None,
) -> list[Path]:
    """Write the package into ``out_dir`` (created; files already there are replaced).

    ``wheel_file`` (sealserve's wheel, see :func:`build_wheel`) is copied in and installed in
    the image; ``platform_key_file`` is the public key of the TEE platform the KeyService runs
    on (the runtime's pin of the KeyService: public, and checked to be one); ``store_dir``
    (sealed models only: ciphertext) is copied into the image's model store.  Returns the
    files written.
    """
    if not isinstance(options, OpenWhiskOptions):
        raise TypeError(f"options must be OpenWhiskOptions, got {type(options).__name__}")
    if not wheel_file.is_file():
        raise ValueError(f"wheel_file {str(wheel_file)!r} is not a file")
    if not wheel_file.name.startswith("sealserve-"):
        raise ValueError(f"wheel_file {str(wheel_file)!r} is not a sealserve wheel")
    public_key = _public_key_text(platform_key_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = dataclasses.replace(options, wheel=wheel_file.name)
    if wheel_file.resolve() != (out_dir / wheel_file.name).resolve():
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
        "entrypoint.sh": _entrypoint(),
        "action.json": spec_json(options),
        "platform.pub": public_key,
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


def spec_json(options: OpenWhiskOptions) -> str:
    """The action's spec file (every field of the options; nothing secret)."""
    return json.dumps(dataclasses.asdict(options), indent=2, sort_keys=True) + "\n"


def _public_key_text(path: Path) -> str:
    """The platform public key file's text, refused if it is not a public key (a private key
    must never go into an image)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the platform key {str(path)!r}: {exc}") from exc
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(
            f"{str(path)!r} is not a platform public key (64 hex digits, as platform.pub)"
        )
    return text + "\n"


def build_wheel(out_dir: Path, *, source: Path | None = None, timeout_s: float = 600.0) -> Path:
    """Build sealserve's wheel from the source checkout this code runs from (or ``source``)
    into ``out_dir``, with pip (nothing of sealserve comes from a package index); its path."""
    root = source if source is not None else _source_root()
    if root is None:
        raise ValueError(
            "sealserve does not run from a source checkout: pass the wheel to package "
            "(--wheel dist/sealserve-*.whl, built with pip wheel --no-deps .)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.glob("sealserve-*.whl"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
               "--wheel-dir", str(out_dir), str(root)]  # fmt: skip
    try:
        subprocess.run(command, check=True, timeout=timeout_s, capture_output=True)
    except subprocess.CalledProcessError as exc:
        tail = exc.stderr.decode("utf-8", "replace")[-600:]
        raise ValueError(f"building sealserve's wheel failed: {tail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ValueError(f"building sealserve's wheel took over {timeout_s:.0f} s") from exc
    made = sorted(set(out_dir.glob("sealserve-*.whl")) - before) or sorted(
        out_dir.glob(f"sealserve-{__version__}-*.whl")
    )
    if not made:
        raise ValueError(f"pip built no sealserve wheel in {str(out_dir)!r}")
    return made[-1]


def _source_root() -> Path | None:
    """The checkout holding this package (``src/sealserve`` under a ``pyproject.toml`` that
    names sealserve), if there is one."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and (parent / "src" / "sealserve").is_dir():
            try:
                text = pyproject.read_text(encoding="utf-8")
            except OSError:
                return None
            return parent if re.search(r'(?m)^name\s*=\s*"sealserve"', text) else None
    return None


def _dockerfile(o: OpenWhiskOptions) -> str:
    assert o.wheel is not None
    return f"""\
# sealserve instance as an OpenWhisk blackbox action
# (written by `sealserve platform openwhisk package`; sealserve {__version__}).
# The untrusted host answers the action contract on 8080; the sealed runtime is launched and
# measured by the TEE platform daemon of the node (its socket mounted at {o.tee_socket}).
# No key is in this image: platform.pub is the public key that pins the KeyService.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1

# sealserve from the wheel built from the repository (its dependencies from PyPI).
COPY {o.wheel} /tmp/
RUN pip install --no-cache-dir /tmp/{o.wheel} && rm /tmp/{o.wheel}

RUN useradd --system --uid {ACTION_UID} --home-dir {_DATA} sealserve \\
    && mkdir -p {_DATA} \\
    && chown -R sealserve {_DATA}
# Sealed models (ciphertext only) baked into the image's model store.
COPY --chown=sealserve store/ {_DATA}/store/
COPY action.json {SPEC_PATH}
COPY platform.pub {PLATFORM_KEY_PATH}
COPY entrypoint.sh /usr/local/bin/sealserve-action
USER sealserve
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sealserve-action"]
"""


def _entrypoint() -> str:
    return f"""\
#!/bin/sh
# The action's limits from the container (memory cgroup, __OW_ALLOW_CONCURRENT), then the
# instance host on 8080, its runtime launched by the node's TEE platform daemon.
set -eu
umask 077
exec sealserve platform openwhisk run --spec {SPEC_PATH} --platform-key {PLATFORM_KEY_PATH} \\
  --data-dir {_DATA} --store {_DATA}/store
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
and measured by the node's TEE platform, is the only process that sees a model, an input or an
output in the clear. OpenWhisk, the image registry and the invoker see ciphertext only.

| limit (manifest, deploy.sh) | value | from |
|---|---|---|
| memory | {o.memory_mb} MB | `platform.instance_memory_mb` |
| timeout | {o.timeout_ms} ms | `gateway.request_timeout_s` |
| concurrency (activations per container) | {o.concurrency} | `platform.instance_concurrency` |

In the container, the runtime's model budget is the action's memory limit (the container's
memory cgroup, which the invoker sets from the action's limit) less
{o.memory_mb - o.memory_budget_mb} MB for the host and the runtime; the host admits
{o.concurrency} activations at once where the invoker allows concurrency
(`__OW_ALLOW_CONCURRENT=true`), else one. An action created with a smaller memory limit gets a
smaller budget; one too small to serve (OpenWhisk's default of 256 MB is) stops at start with
the command that fixes it. The OpenWhisk deployment must allow the limits (raise
`limit_action_memory_max`, enable intra-container concurrency).

## The TEE: the node's, never a key in the container

Every invoker node runs sealserve's TEE platform daemon (`sealserve attest platform serve
--socket /run/sealserve/tee.sock`, on SGX or TDX hardware the launcher of the real TEE): it
launches and measures the runtime and alone can produce its evidence. The action's container
reaches it through the socket, mounted from the node at `{o.tee_socket}` (in the invoker's
container arguments, e.g. a volume `/run/sealserve:/run/sealserve`); the daemon must accept
connections from uid {ACTION_UID} (run it as that user, or give the socket to that group).
The image holds no key: `platform.pub` is the public key of the platform the KeyService runs
on, which the runtime pins (with the measurement below) before it trusts the KeyService.

## Build and deploy

```sh
docker build -t {o.image} .           # installs {o.wheel}, built from the repository
docker push {o.image}                 # to a registry your invokers pull from
wskdeploy -m manifest.yaml            # or: ./deploy.sh
```

## Invoke

```sh
wsk action invoke {name} --result --param-file run.json
```

where `run.json` is `{{"model_id": "<owner>/<name>", "user_id": "<64 hex>", "request_id":
"<id>", "input": "<sealed input, base64>"}}` (the client seals it with the user's request key:
`sealserve.protocol.seal_input`). The answer's `output` is the sealed output, base64.

## Models

`store/` holds sealed models (ciphertext) baked into the image
(`--store` when packaging); the runtime fetches them through the host and unseals them with
keys the KeyService releases only to an attested runtime whose measurement the owner granted.
The KeyService is `{o.keyservice_url}`, pinned to measurement `{o.keyservice_measurement}`.
"""
