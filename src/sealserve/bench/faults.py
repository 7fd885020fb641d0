"""``sealserve bench faults``: a steady mixed load through the gateway while faults strike.

One stack (:class:`~sealserve.bench._fault_stack.FaultStack`): the simulated TEE's daemon, two
KeyService replicas on one database (a throwaway PostgreSQL server of its own, or
``--postgres-url``, or a SQLite file) behind a balancer, the gateway as its own process with
the local platform, three models of three sizes and three users.  A steady load
(:class:`~sealserve.bench._load.SteadyLoad`: client threads, each request sent again while its
failure is retryable, for 20 s at most) runs while each fault is injected in turn:

==========================  ==================================================================
``runtime-sigkill``         SIGKILL of a runtime (its host starts another)
``host-sigkill``            SIGKILL of an instance host (the platform replaces the instance)
``gateway-sigkill``         SIGKILL of the gateway, started again at once (clients retry)
``keyservice-replica-kill`` SIGKILL of one KeyService replica of two, started again after 5 s
``keyservice-all-kill``     SIGKILL of both replicas, started again after 3 s
``postgres-restart``        a fast restart of PostgreSQL (its own server only)

                            (each of these three also replaces an instance: warm runtimes hold
                            their keys, a new one must ask the KeyService)
``store-disk-full``         the model store's file system full for 6 s (root: a tmpfs), while
                            the owner uploads a model every 0.5 s
``model-deleted``           a sealed model's blob deleted for 15 s, while an instance is replaced
``model-truncated``         the same blob cut to half its size for 15 s, the same
``keyservice-slow``         every KeyService connection held 2 s, for 15 s, the same
``slow-client-body``        a client that sends its body one byte every 100 ms, for 10 s
==========================  ==================================================================

For each fault, the requests answered from the fault until the load stopped: succeeded,
failed retryably (still failing when the client gave up), failed otherwise (a refusal the
fault explains, e.g. a model that is gone), lost (no answer, or a wrong one: must be 0); the
recovery time (from the fault until the successes per second are back to half their rate
before it, with no failure after: the first success after the last failure that opens a
second holding that many); and, once the load stopped and the instances scaled to zero,
what leaked against the quiet stack before the faults: processes of the stack, unmapped
shared-memory segments, open descriptors of the gateway, the KeyService replicas and this
process (each must be 0).  The Ray faults (a replica's process killed, a worker node
removed) run on a Ray cluster: ``sealserve bench ray``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final

import numpy as np
import typer
from rich.console import Console

from sealserve._log import get_logger
from sealserve.bench._common import environment, exit_on_sigterm, print_table, write_json
from sealserve.bench._fault_stack import Census, FaultStack, zygotes
from sealserve.bench._load import SIZES, Job, SteadyLoad, mlp_model, plain_outputs, summarize
from sealserve.bench._postgres import ThrowawayPostgres, postgres_bindir

__all__ = ["FAULTS", "Fault", "FaultsConfig", "register", "run_faults", "table_rows"]

_log = get_logger(__name__)
_IDLE_S: Final = 60.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaultsConfig:
    """What to run: ``only`` names faults (all that this machine can run when empty)."""

    only: tuple[str, ...] = ()
    postgres_url: str = ""
    own_postgres: bool = True
    concurrency: int = 6
    settle_s: float = 4.0
    observe_s: float = 15.0
    keep_alive_s: float = 3.0
    store_tmpfs: bool = True
    #: Keep the stack's directory (logs) after the run, for a post-mortem.
    keep_dir: bool = False


@dataclasses.dataclass
class _Ctx:
    stack: FaultStack
    load: SteadyLoad
    pg: ThrowawayPostgres | None
    model_ids: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    what: str
    run: Callable[[_Ctx], None]
    needs: str = ""


def _instance(ctx: _Ctx, *, timeout_s: float = 20.0) -> dict[str, Any]:
    """A live instance of the gateway's (waiting for one while the load starts them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            for inst in ctx.stack.platform_doc()["instances"]:
                if inst.get("pid") and inst.get("runtime_pid") and inst.get("state") != "starting":
                    return dict(inst)
        time.sleep(0.2)
    raise RuntimeError("no live instance to strike")


def _runtime_sigkill(ctx: _Ctx) -> None:
    os.kill(int(_instance(ctx)["runtime_pid"]), 9)


def _host_sigkill(ctx: _Ctx) -> None:
    os.kill(int(_instance(ctx)["pid"]), 9)


def _gateway_sigkill(ctx: _Ctx) -> None:
    ctx.stack.kill_gateway()
    ctx.stack.start_gateway()  # a supervisor starts it again at once


def _replace_an_instance(ctx: _Ctx) -> None:
    """Kill an instance host: its replacement must get its keys from the KeyService (warm
    runtimes hold theirs, so a KeyService fault alone is not felt)."""
    with contextlib.suppress(RuntimeError, OSError):
        os.kill(int(_instance(ctx)["pid"]), 9)


def _keyservice_replica_kill(ctx: _Ctx) -> None:
    ctx.stack.kill_keyservice(0)
    _replace_an_instance(ctx)
    time.sleep(5.0)
    ctx.stack.restart_keyservice(0)


def _keyservice_all_kill(ctx: _Ctx) -> None:
    for i in range(len(ctx.stack.keyservices)):
        ctx.stack.kill_keyservice(i)
    _replace_an_instance(ctx)
    time.sleep(3.0)
    for i in range(len(ctx.stack.keyservices)):
        ctx.stack.restart_keyservice(i)


def _postgres_restart(ctx: _Ctx) -> None:
    assert ctx.pg is not None
    _replace_an_instance(ctx)
    ctx.pg.restart()


def _store_disk_full(ctx: _Ctx) -> None:
    stack = ctx.stack
    filler = stack.store.root / ".filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        chunk = b"\0" * (1 << 20)
        while True:
            f.write(chunk)
            f.flush()
    refused = accepted = 0
    end = time.monotonic() + 6.0
    n = 0
    while time.monotonic() < end:
        n += 1
        try:
            stack.add_model(f"full-{n}", mlp_model(500 + n, inputs=256, hidden=512, layers=2))
            accepted += 1
        except Exception:
            refused += 1
        time.sleep(0.5)
    filler.unlink()
    leftovers = [p.name for p in stack.store.root.rglob("*") if p.name.endswith(".tmp")]
    ctx.notes.append(
        f"store-disk-full: {refused} uploads refused, {accepted} accepted while full; "
        f"{len(leftovers)} partial files left"
    )


def _blob(ctx: _Ctx) -> Path:
    manifest = ctx.stack.store.get(ctx.model_ids[1])
    return ctx.stack.store.root / "blobs" / "sha256" / manifest.digest


def _model_deleted(ctx: _Ctx) -> None:
    blob = _blob(ctx)
    keep = blob.with_name(blob.name + ".kept")
    blob.rename(keep)
    with contextlib.suppress(RuntimeError, OSError):
        os.kill(int(_instance(ctx)["pid"]), 9)  # a new instance must load it from the store
    time.sleep(_MODEL_GONE_S)
    keep.rename(blob)


_MODEL_GONE_S: Final = 15.0


def _model_truncated(ctx: _Ctx) -> None:
    blob = _blob(ctx)
    keep = blob.with_name(blob.name + ".kept")
    shutil.copy2(blob, keep)
    mode = blob.stat().st_mode
    blob.chmod(0o644)
    with blob.open("r+b") as f:
        f.truncate(blob.stat().st_size // 2)
    with contextlib.suppress(RuntimeError, OSError):
        os.kill(int(_instance(ctx)["pid"]), 9)
    time.sleep(_MODEL_GONE_S)
    keep.replace(blob)
    blob.chmod(mode & 0o777)


def _keyservice_slow(ctx: _Ctx) -> None:
    ctx.stack.ks_balancer.delay_s = 2.0
    with contextlib.suppress(RuntimeError, OSError):
        os.kill(int(_instance(ctx)["pid"]), 9)  # a new instance must fetch its keys
    time.sleep(15.0)
    ctx.stack.ks_balancer.delay_s = 0.0


def _slow_client_body(ctx: _Ctx) -> None:
    from sealserve.protocol import headers as hd
    from sealserve.protocol import new_request_id

    url = ctx.stack.gw_balancer.url.removeprefix("http://")
    host, port = url.rsplit(":", 1)
    job = ctx.load.jobs[0]
    body = b"\0" * 4096  # the gateway reads it whole before anything else sees it
    head = (
        f"POST /v1/models/{job.model_id}:infer HTTP/1.1\r\nHost: {url}\r\n"
        f"content-type: application/octet-stream\r\ncontent-length: {len(body)}\r\n"
        f"{hd.USER_HEADER}: {job.user_id}\r\n{hd.REQUEST_ID_HEADER}: {new_request_id()}\r\n"
        f"{hd.TIMEOUT_HEADER}: 60000\r\n\r\n"
    ).encode()
    outcome = "held its connection to the end, sending"
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head)
        end = time.monotonic() + 10.0
        i = 0
        while time.monotonic() < end and i < len(body):
            try:
                sock.sendall(body[i : i + 1])
            except OSError as exc:
                outcome = f"cut off by the gateway after {i} bytes ({type(exc).__name__})"
                break
            i += 1
            time.sleep(0.1)
    ctx.notes.append(f"slow-client-body: {outcome}")


FAULTS: Final = (
    Fault("runtime-sigkill", "SIGKILL of a runtime", _runtime_sigkill),
    Fault("host-sigkill", "SIGKILL of an instance host", _host_sigkill),
    Fault("gateway-sigkill", "SIGKILL of the gateway, started again", _gateway_sigkill),
    Fault("keyservice-replica-kill", "SIGKILL of 1 of 2 KeyService replicas (back after 5 s)",
          _keyservice_replica_kill),
    Fault("keyservice-all-kill", "SIGKILL of both KeyService replicas (back after 3 s)",
          _keyservice_all_kill),
    Fault("postgres-restart", "PostgreSQL restarted (fast)", _postgres_restart, "postgres"),
    Fault("store-disk-full", "model store's disk full for 6 s, uploads meanwhile",
          _store_disk_full, "tmpfs"),
    Fault("model-deleted", "a sealed model deleted for 15 s (and an instance replaced)",
          _model_deleted),
    Fault("model-truncated", "a sealed model truncated for 15 s (and an instance replaced)",
          _model_truncated),
    Fault("keyservice-slow", "KeyService answering 2 s late for 15 s (an instance replaced)",
          _keyservice_slow),
    Fault("slow-client-body", "a client sending its body 1 byte / 100 ms for 10 s",
          _slow_client_body),
)  # fmt: skip


#: How long the census is taken again while something seems left (see _settled_leaks).
_SETTLE_S: Final = 15.0


def _leaks(base: Census, now: Census, expected: set[int], base_pids: dict[str, int],
           pids: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    extra = {pid: cmd for pid, cmd in now.processes.items() if pid not in expected}
    fds: dict[str, int] = {}
    for role, count in now.fds.items():
        same = role in base.fds and base_pids.get(role) == pids.get(role)
        if same and count > base.fds[role]:
            fds[role] = count - base.fds[role]
    return {
        "processes": len(extra),
        "process_names": sorted(f"{pid}: {cmd[:80]}" for pid, cmd in extra.items()),
        "shm": len(now.shm - base.shm),
        "fds": sum(fds.values()),
        "fds_by_process": fds,
    }


def _warm(load: SteadyLoad, config: FaultsConfig) -> None:
    """Wait until the load runs warm: two answers per client thread since it started (the
    instances scaled to zero between faults; a cold start takes seconds on a busy machine)."""
    began = time.monotonic()
    deadline = began + _IDLE_S
    while time.monotonic() < deadline:
        if sum(1 for r in load.records(since=began) if r.outcome == "ok") >= 2 * load.concurrency:
            break
        time.sleep(0.2)
    time.sleep(config.settle_s)


def _quiet_census(stack: FaultStack, expected: set[int]) -> Census:
    """The census once the instances that scaled to zero have also exited (their processes
    end a moment after the gateway stops listing them); at most 20 s."""
    deadline = time.monotonic() + 20.0
    while True:
        census = stack.census()
        if not set(census.processes) - expected or time.monotonic() > deadline:
            return census
        time.sleep(0.25)


def _settled_leaks(stack: FaultStack, base: Census, base_pids: dict[str, int]) -> dict[str, Any]:
    """What is left against the quiet ``base`` once the stack settled: a descriptor or segment
    that a process releases a moment after its instance went (a connection being closed, a
    runtime's channel being reaped) is not a leak, so the census is taken again for up to
    ``_SETTLE_S`` while anything seems left; what is still left then is reported."""
    deadline = time.monotonic() + _SETTLE_S
    while True:
        pids = _pids(stack)
        now = _quiet_census(stack, set(pids.values()))
        for role, pid in pids.items():
            if base_pids.get(role) != pid and role in now.fds:  # restarted: new baseline
                base.fds[role] = now.fds[role]
                base_pids[role] = pid
        leaks = _leaks(base, now, set(pids.values()), base_pids, pids)
        if not (leaks["processes"] or leaks["shm"] or leaks["fds"]):
            return leaks
        if time.monotonic() > deadline:
            return leaks
        time.sleep(0.5)


def _pids(stack: FaultStack) -> dict[str, int]:
    out = {"bench": os.getpid()}
    if stack.gateway is not None:
        out["gateway"] = stack.gateway.pid
    for i, ks in enumerate(stack.keyservices):
        if ks is not None:
            out[f"keyservice-{i}"] = int(ks.process.pid)
    if stack.gateway is not None:
        for zygote in zygotes(stack.gateway.pid):  # the gateway's host template: lives with it
            out[f"zygote-{zygote}"] = zygote
    if stack.platform is not None:
        # The TEE daemon's measured templates (one per kind of launch, a few at most: see
        # sealserve.attest._templates) live as long as the daemon, by design; one may start
        # after the quiet census, when a launch first needs it.
        for t in stack.platform.templates():
            pid = t.get("pid")
            if isinstance(pid, int):
                out[f"template-{pid}"] = pid
    return out


def _jobs(stack: FaultStack, users: int) -> tuple[list[Job], list[str]]:
    from sealserve.client import KeyServicePin, User
    from sealserve.crypto import Identity, RequestKey

    principals = [stack.user]
    pin = KeyServicePin(policy=stack.keyservice_policy, trust=stack.trust)
    for _ in range(users - 1):
        u = User(Identity.generate(), keyservice_url=stack.keyservice_url, pin=pin)
        u.open()
        u.register()
        principals.append(u)
    jobs: list[Job] = []
    model_ids: list[str] = []
    rng = np.random.default_rng(3)
    for i, (size, (inputs, hidden, layers)) in enumerate(SIZES.items()):
        onnx = mlp_model(100 + i, inputs=inputs, hidden=hidden, layers=layers)
        model = stack.add_model(f"faults-{size}", onnx)
        model_ids.append(model.model_id)
        for user in principals:
            assert user is not None
            assert stack.owner is not None
            key = model.request_key
            if user is not stack.user:
                stack.owner.grant(f"faults-{size}", user.principal_id, stack.runtime_policy)
                key = RequestKey.generate()
                user.put_request_key(model.model_id, key, stack.runtime_policy)
            x = {"X": rng.standard_normal((1, inputs)).astype(np.float32)}
            jobs.append(Job(model.model_id, user.principal_id, key, x, plain_outputs(onnx, x)))
    for user in principals[1:]:
        assert user is not None
        user.close()
    return jobs, model_ids


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def run_faults(
    config: FaultsConfig, *, root: Path | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the faults of ``config``; the results (see the module docstring)."""
    say = progress or (lambda _m: None)
    chosen = [f for f in FAULTS if not config.only or f.name in config.only]
    unknown = set(config.only) - {f.name for f in FAULTS}
    if unknown:
        raise ValueError(f"unknown faults: {sorted(unknown)}; known: {[f.name for f in FAULTS]}")
    workdir = Path(tempfile.mkdtemp(prefix="ssfaults-", dir=root))
    pg: ThrowawayPostgres | None = None
    skipped: dict[str, str] = {}
    db_url = config.postgres_url
    if not db_url and config.own_postgres and postgres_bindir() is not None:
        say("starting PostgreSQL")
        pg = ThrowawayPostgres().start()
        db_url = pg.url
    tmpfs = config.store_tmpfs and _can_mount()
    for fault in chosen:
        if fault.needs == "postgres" and pg is None:
            skipped[fault.name] = "needs the benchmark's own PostgreSQL server"
        if fault.needs == "tmpfs" and not tmpfs:
            skipped[fault.name] = "needs root to mount a tmpfs for the store"
    env = {
        "SEALSERVE_PLATFORM_KEEP_ALIVE_S": repr(config.keep_alive_s),
        "SEALSERVE_PLATFORM_MAX_INSTANCES": "3",
        "SEALSERVE_PLATFORM_INSTANCE_CONCURRENCY": "4",
    }
    results: list[dict[str, Any]] = []
    stack = FaultStack(
        workdir / "stack", db_url=db_url, gateway_env=env, store_tmpfs_mb=64 if tmpfs else None
    )
    try:
        say("starting the stack")
        stack.open()
        url = stack.start_gateway()
        jobs, model_ids = _jobs(stack, users=3)
        load = SteadyLoad(url, jobs, concurrency=config.concurrency)
        ctx = _Ctx(stack=stack, load=load, pg=pg, model_ids=model_ids)
        say("warming up")
        load.start()
        _warm(load, config)
        time.sleep(config.settle_s)
        load.stop()
        stack.wait_idle(timeout_s=_IDLE_S)
        base_pids = _pids(stack)
        base = _quiet_census(stack, set(base_pids.values()))
        for fault in chosen:
            if fault.name in skipped:
                continue
            say(f"fault {fault.name}")
            ctx.notes.clear()
            load = ctx.load = SteadyLoad(url, jobs, concurrency=config.concurrency)
            load.start()
            _warm(load, config)
            began = time.monotonic()
            error = ""
            try:
                fault.run(ctx)
            except Exception as exc:  # the fault could not be injected: say so in the table
                error = f"{type(exc).__name__}: {exc}"
            time.sleep(config.observe_s)
            # ... and on until the load is back (a restart and its cold starts take their time
            # on a busy machine), at most _IDLE_S more
            until = time.monotonic() + _IDLE_S
            while time.monotonic() < until:
                now_s = time.monotonic()
                if summarize(load.records(), since=began, until=now_s)["recovery_s"] is not None:
                    break
                time.sleep(1.0)
            time.sleep(1.0)
            load.stop()
            summary = summarize(load.records(), since=began, until=time.monotonic())
            idle = stack.wait_idle(timeout_s=_IDLE_S)
            leaks = _settled_leaks(stack, base, base_pids)
            results.append({
                "fault": fault.name, "what": fault.what, **summary, "leaked": leaks,
                "scaled_to_zero": idle, "notes": list(ctx.notes), "error": error,
            })  # fmt: skip
            _log.event("bench.fault_done", fault=fault.name, ok=summary["ok"],
                       lost=summary["lost"])  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            ctx.load.stop(timeout_s=30)
        stack.close()
        if pg is not None:
            pg.close()
        if not config.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "faults",
        "environment": environment(),
        "database": "postgresql" if db_url.startswith("postgresql") else "sqlite",
        "config": dataclasses.asdict(config),
        "faults": results,
        "skipped": skipped,
        "workdir": str(workdir) if config.keep_dir else None,
    }


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in results:
        leaked = r["leaked"]
        rows.append([
            r["fault"], r["requests"], r["ok"], r["retried"], r["retryable"], r["failed"],
            r["lost"],
            "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}",
            leaked["processes"], leaked["shm"], leaked["fds"],
        ])  # fmt: skip
    return rows


HEADERS: Final = ("fault", "requests", "succeeded", "retried", "failed retryably",
                  "failed otherwise", "lost", "recovery s", "leaked processes", "leaked shm",
                  "leaked fds")  # fmt: skip


def register(app: typer.Typer) -> None:
    @app.command("faults")
    def faults_command(
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Write the results here as JSON.")
        ] = None,
        only: Annotated[
            list[str] | None,
            typer.Option("--only", help="Only these faults (repeatable); default: all."),
        ] = None,
        postgres_url: Annotated[
            str,
            typer.Option(
                help="Use this PostgreSQL (default: start a throwaway server, else SQLite)."
            ),
        ] = "",
        concurrency: Annotated[int, typer.Option(min=1, help="Client threads.")] = 6,
        observe_s: Annotated[
            float, typer.Option(min=1.0, help="Seconds of load after each fault.")
        ] = 15.0,
        keep_dir: Annotated[
            bool, typer.Option(help="Keep the stack's directory and logs afterwards.")
        ] = False,
    ) -> None:
        """A steady mixed load through the gateway while each fault strikes in turn: what
        succeeded, failed, was lost, the recovery time and what leaked, per fault."""
        exit_on_sigterm()
        console = Console()
        config = FaultsConfig(
            only=tuple(only or ()),
            postgres_url=postgres_url,
            concurrency=concurrency,
            observe_s=observe_s,
            keep_dir=keep_dir,
        )
        data = run_faults(config, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
        print_table("faults under load", HEADERS, table_rows(data["faults"]), console=console)
        for r in data["faults"]:
            for note in r["notes"]:
                console.print(f"  {note}")
            if r["error"]:
                console.print(f"  {r['fault']}: could not inject: {r['error']}")
            if r["leaked"]["process_names"]:
                console.print(f"  {r['fault']}: left {r['leaked']['process_names']}")
            if r["leaked"]["fds_by_process"]:
                console.print(f"  {r['fault']}: descriptors {r['leaked']['fds_by_process']}")
            if r["errors"]:
                console.print(f"  {r['fault']}: errors {r['errors']}")
        for name, why in data["skipped"].items():
            console.print(f"  skipped {name}: {why}")
        if json_path is not None:
            write_json(json_path, data)
        lost = sum(r["lost"] for r in data["faults"])
        leaked = sum(r["leaked"]["processes"] + r["leaked"]["shm"] + r["leaked"]["fds"]
                     for r in data["faults"])  # fmt: skip
        if lost or leaked:
            raise typer.Exit(1)
