"""What ``sealserve bench serve`` runs and measures: the two servers, the load generator, CPU.

* :class:`UpDeployment` — ``sealserve up`` as a subprocess (the TEE daemon, the KeyService,
  the gateway and the local platform: the system as a user starts it), with an owner and a
  user who publish the benchmark's models, and one sealed input per model;
* :class:`PlainServer` — plain onnxruntime behind a minimal HTTP server
  (:mod:`sealserve.bench._plain_server`), one process per model;
* :func:`run_hey` — ``hey`` (a native load generator from Debian) against either, its
  per-request CSV parsed into latencies and throughput;
* :func:`process_tree` and :func:`cpu_seconds` — CPU time from ``/proc``, per process and role.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from sealserve.bench._common import percentile

__all__ = [
    "HeyRun",
    "PlainServer",
    "PublishedModel",
    "UpDeployment",
    "cpu_seconds",
    "find_load_generator",
    "parse_hey_csv",
    "process_tree",
    "role_of",
    "run_hey",
]

_START_TIMEOUT_S: Final = 180.0
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: How to get the load generator where it is missing.
INSTALL_HINT: Final = "install it with `apt-get install hey` (Debian, Ubuntu)"


def find_load_generator() -> str:
    """The ``hey`` executable; ``FileNotFoundError`` saying how to install it if absent."""
    path = shutil.which("hey")
    if path is None:
        raise FileNotFoundError(f"sealserve bench serve needs `hey` on the PATH: {INSTALL_HINT}")
    return path


# -- /proc -----------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of ``pid``, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def role_of(cmdline: str) -> str:
    """What a sealserve process is, from its command line."""
    if " up " in f" {cmdline} " and "-m sealserve up" in cmdline:
        return "gateway"
    if "attest platform serve" in cmdline:
        return "tee daemon"
    if "instance serve" in cmdline:
        return "host"
    if "sealserve.runtime" in cmdline:
        return "runtime"
    if "sealserve.keyservice" in cmdline:
        return "keyservice"
    if "_plain_server" in cmdline:
        return "plain"
    return "other"


def process_tree(root: int) -> dict[int, str]:
    """``root`` and every process below it, each with its role."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                parents.setdefault(info[0], []).append(int(entry))
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out[pid] = role_of(_cmdline(pid))
        todo.extend(parents.get(pid, ()))
    return out


def cpu_seconds(pids: Mapping[int, str]) -> dict[int, float]:
    """CPU seconds (user + system) of each live process of ``pids``."""
    out: dict[int, float] = {}
    for pid in pids:
        info = _stat(pid)
        if info is not None:
            out[pid] = info[1]
    return out


# -- hey -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeyRun:
    """One ``hey`` run: per-request latencies (ms) of the 200 answers, and what failed."""

    requests: int
    concurrency: int
    latencies_ms: list[float]
    wall_s: float
    errors: int
    statuses: dict[str, int]

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def run_hey(
    url: str,
    *,
    body: Path,
    headers: Mapping[str, str],
    requests: int,
    concurrency: int,
    timeout_s: int = 60,
) -> HeyRun:
    """``requests`` POSTs of ``body`` to ``url``, ``concurrency`` at a time, keep-alive."""
    command = [
        find_load_generator(), "-o", "csv", "-n", str(requests), "-c", str(concurrency),
        "-t", str(timeout_s), "-m", "POST", "-T", "application/octet-stream", "-D", str(body),
    ]  # fmt: skip
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"hey failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return parse_hey_csv(done.stdout, requests=requests, concurrency=concurrency)


def parse_hey_csv(text: str, *, requests: int, concurrency: int) -> HeyRun:
    """``hey -o csv``'s lines (``response-time,DNS+dialup,DNS,Request-write,Response-delay,
    Response-read,status-code,offset``, seconds) as a :class:`HeyRun`: latencies of the 200
    answers, throughput over the span from the first start to the last end."""
    latencies: list[float] = []
    starts: list[float] = []
    ends: list[float] = []
    statuses: dict[str, int] = {}
    for line in text.strip().splitlines()[1:]:
        parts = line.split(",")
        if len(parts) < 8:
            continue
        try:
            took, offset = float(parts[0]), float(parts[7])
        except ValueError:
            continue
        status = parts[6].strip()
        statuses[status] = statuses.get(status, 0) + 1
        starts.append(offset)
        ends.append(offset + took)
        if status == "200":
            latencies.append(took * 1000)
    wall = (max(ends) - min(starts)) if starts else 0.0
    return HeyRun(requests, concurrency, latencies, wall, requests - len(latencies), statuses)


# -- the servers -----------------------------------------------------------------------------


def _wait_for(path: Path, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not path.exists():
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise OSError(f"{what} exited with status {process.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise OSError(f"{what} did not start within {_START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class PlainServer:
    """Plain onnxruntime for one model behind the minimal HTTP server; a context manager."""

    def __init__(self, model: Path, *, threads: int, workers: int, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        ready = run_dir / f"plain-{model.stem}.json"
        ready.unlink(missing_ok=True)
        self.log = run_dir / f"plain-{model.stem}.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sealserve.bench._plain_server", "--model", str(model),
                 "--threads", str(threads), "--workers", str(workers),
                 "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        try:
            _wait_for(ready, self.process, "the plain server", self.log)
        except BaseException:
            _stop(self.process)
            raise
        self.url = str(json.loads(ready.read_text())["url"]) + "/infer"
        self.pid = self.process.pid

    def close(self) -> None:
        _stop(self.process)

    def __enter__(self) -> PlainServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class PublishedModel:
    """A model the deployment's owner stored and granted: its id, the user, a sealed input
    (a file, as ``hey`` sends it) and the plaintext input in the same container."""

    name: str
    model_id: str
    user_id: str
    request_key: Any
    sealed_body: Path
    plain_body: Path
    request_id: str
    sealed_bytes: int


class UpDeployment:
    """``sealserve up`` in a subprocess, with an owner and a user; a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        keep_alive_s: float,
        max_instances: int = 1,
        extra: Sequence[str] = (),
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        ready = root / "up.json"
        ready.unlink(missing_ok=True)
        self.log = root / "up.log"
        command = [
            sys.executable, "-m", "sealserve", "up",
            "--data-dir", str(root / "data"),
            "--keyservice-port", "0", "--gateway-port", "0",
            "--max-instances", str(max_instances),
            "--keep-alive-s", repr(float(keep_alive_s)),
            "--sizes-mb", "",
            "--ready-file", str(ready),
            "--log-level", "WARNING",
            *extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        try:
            _wait_for(ready, self.process, "sealserve up", self.log)
        except BaseException:
            _stop(self.process)
            raise
        self.info: dict[str, Any] = json.loads(ready.read_text())
        self.url = str(self.info["gateway_url"])
        self.pid = self.process.pid
        self._owner: Any = None
        self._user: Any = None

    # -- principals and models -------------------------------------------------------------------

    def _principals(self) -> tuple[Any, Any, Any]:
        from sealserve.attest import Policy, TrustAnchors
        from sealserve.client import KeyServicePin, Owner, User
        from sealserve.crypto import Identity

        info = self.info
        runtime = Policy(measurements=frozenset({info["runtime_measurement"]}))
        if self._owner is None:
            pin = KeyServicePin(
                policy=Policy(measurements=frozenset({info["keyservice_measurement"]})),
                trust=TrustAnchors.from_data_dir(Path(info["data_dir"])),
            )
            url = info["keyservice_url"]
            self._owner = Owner(Identity.generate(), keyservice_url=url, pin=pin).open()
            self._user = User(Identity.generate(), keyservice_url=url, pin=pin).open()
            self._owner.register()
            self._user.register()
        return self._owner, self._user, runtime

    def publish(self, name: str, onnx: Path, inputs: Mapping[str, Any]) -> PublishedModel:
        """Upload ``onnx`` as ``name``, grant it to the user, register a request key, and
        write one sealed input (and its plaintext twin) for the load generator."""
        from sealserve.client import upload_model
        from sealserve.crypto import RequestKey
        from sealserve.instance import ModelStore
        from sealserve.protocol import encode_tensors, new_request_id, seal_input

        owner, user, runtime = self._principals()
        receipt = upload_model(owner, ModelStore(self.info["store_dir"]), name, onnx)
        owner.grant(name, user.principal_id, runtime)
        key = RequestKey.generate()
        user.put_request_key(receipt.model_id, key, runtime)
        request_id = new_request_id()
        sealed = seal_input(
            key, inputs, model_id=receipt.model_id, user_id=user.principal_id,
            request_id=request_id,
        )  # fmt: skip
        sealed_path = self.root / f"{name}.sealed"
        plain_path = self.root / f"{name}.plain"
        sealed_path.write_bytes(sealed)
        plain_path.write_bytes(encode_tensors(dict(inputs)))
        return PublishedModel(
            name=name,
            model_id=receipt.model_id,
            user_id=user.principal_id,
            request_key=key,
            sealed_body=sealed_path,
            plain_body=plain_path,
            request_id=request_id,
            sealed_bytes=len(sealed),
        )

    def infer_url(self, model: PublishedModel) -> str:
        return f"{self.url}/v1/models/{model.model_id}:infer"

    @staticmethod
    def headers(model: PublishedModel) -> dict[str, str]:
        from sealserve.protocol import headers as hd

        return {hd.USER_HEADER: model.user_id, hd.REQUEST_ID_HEADER: model.request_id}

    def platform(self) -> dict[str, Any]:
        """``GET /v1/platform``."""
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        try:
            conn.request("GET", "/v1/platform?recent=0")
            doc: dict[str, Any] = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return doc

    def wait_for_no_instance(self, *, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.platform().get("instances"):
            if time.monotonic() > deadline:
                raise OSError("the deployment's instances did not scale to zero in time")
            time.sleep(0.1)

    def close(self) -> None:
        for principal in (self._owner, self._user):
            if principal is not None:
                with contextlib.suppress(Exception):
                    principal.close()
        _stop(self.process)

    def __enter__(self) -> UpDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
