"""``make demo``: sealed inference end to end on this machine, next to plain onnxruntime.

1. ``sealserve up``: the simulated TEE's platform daemon, the KeyService (attested), the
   gateway and the local platform, on 127.0.0.1, in a fresh data directory;
2. as a model owner: seal MobileNetV2, open_nsfw and MiniLM, upload them to the gateway's model
   store (signed, chunked, digest-checked: the gateway only ever holds the sealed bytes),
   hand their keys to the KeyService, and grant a user access in the attested runtime only;
3. as that user: classify a photograph (matplotlib's grace_hopper.jpg), score it with
   open_nsfw, embed two sentences with MiniLM, all sealed on this side and unsealed on this
   side; then a burst of concurrent requests over the three models, and a user with no grant;
4. print every result next to plain onnxruntime's (and whether they match), the stage timings
   and the packer's routing decisions; stop everything; exit 0 when all matched.

Run it with ``make demo`` (or ``python examples/demo.py`` in the project's environment).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn
from rich.table import Table

from sealserve.attest import TrustAnchors
from sealserve.client import (
    Identity,
    Inference,
    KeyServicePin,
    Owner,
    Policy,
    StoreClient,
    User,
    upload_model,
)
from sealserve.errors import AccessDenied
from sealserve.models import build, get_spec, sample_image_path

SENTENCES = [
    "Grace Hopper wrote one of the first compilers.",
    "A pioneer of computer programming built an early compiler.",
]
MODELS = ("mobilenet-v2", "open-nsfw", "minilm-int8")
READY_TIMEOUT_S = 180.0

console = Console(highlight=False)


def main() -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sealserve-demo-"))
    up: subprocess.Popen[bytes] | None = None
    try:
        console.rule("[bold]sealserve demo: inference on sealed data")
        up, info = start_stack(work)
        ok = run_demo(work, info)
        console.rule("stopping")
        code = stop_stack(up)
        up = None
        console.print(f"sealserve up stopped with status {code}; no process is left behind")
        elapsed = time.monotonic() - started
        verdict = "[green]all results match plain onnxruntime" if ok else "[red]MISMATCH"
        console.print(f"{verdict}[/] ({elapsed:.0f} s)")
        return 0 if ok and code == 0 else 1
    finally:
        if up is not None:
            stop_stack(up)
        shutil.rmtree(work, ignore_errors=True)


# -- the stack ---------------------------------------------------------------------------------


def start_stack(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = work / "up.json"
    command = [
        sys.executable, "-m", "sealserve", "up",
        "--data-dir", str(work / "data"),
        "--keyservice-port", "0",
        "--gateway-port", "0",
        "--max-instances", "2",
        "--ready-file", str(ready),
        "--log-level", "WARNING",
    ]  # fmt: skip
    console.print("$ sealserve up --data-dir ... (TEE daemon, KeyService, gateway, platform)")
    log = (work / "up.log").open("wb")
    up = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    with console.status("starting the stack"):
        while not ready.exists():
            if up.poll() is not None or time.monotonic() > deadline:
                log.close()
                sys.stderr.write((work / "up.log").read_text(errors="replace")[-3000:])
                raise SystemExit("sealserve up did not start")
            time.sleep(0.1)
    log.close()
    info = json.loads(ready.read_text())
    for name, key in (
        ("gateway", "gateway_url"),
        ("KeyService", "keyservice_url"),
        ("KeyService measurement", "keyservice_measurement"),
        ("runtime measurement", "runtime_measurement"),
        ("routing policy", "policy"),
    ):
        console.print(f"  {name:<22} {info[key]}", soft_wrap=True)
    return up, info


def stop_stack(up: subprocess.Popen[bytes]) -> int:
    """Ctrl-C, as a user would; the exit status."""
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(10)
    return int(up.returncode)


# -- the owner and the user --------------------------------------------------------------------


def run_demo(work: Path, info: dict[str, Any]) -> bool:
    data = Path(info["data_dir"])
    pin = KeyServicePin(
        policy=Policy(measurements=frozenset({info["keyservice_measurement"]})),
        trust=TrustAnchors.from_data_dir(data),
    )
    runtime = Policy(measurements=frozenset({info["runtime_measurement"]}))
    url, gateway = info["keyservice_url"], info["gateway_url"]
    files = {name: build(name, work / "zoo") for name in MODELS}
    with (
        Owner(Identity.generate(), keyservice_url=url, pin=pin) as owner,
        User(
            Identity.generate(), keyservice_url=url, pin=pin, gateway_url=gateway, runtime=runtime
        ) as user,
        User(
            Identity.generate(), keyservice_url=url, pin=pin, gateway_url=gateway, runtime=runtime
        ) as stranger,
    ):
        console.rule("as the model owner")
        owner.register()
        user.register()
        stranger.register()
        console.print(f"owner {owner.principal_id[:16]}…, user {user.principal_id[:16]}…")
        with StoreClient(gateway, identity=owner.identity) as store:
            share_models(owner, user, store, files, runtime)
        console.rule("as the user: sealed on this side, unsealed on this side")
        results = infer_all(owner, user, files)
        burst(owner, user)
        refused(owner, stranger)
        show_platform(user)
    return all(results)


def share_models(
    owner: Owner,
    user: User,
    store: StoreClient,
    files: dict[str, Path],
    runtime: Policy,
) -> None:
    """Seal each model, upload it to the gateway's store, give its key to the KeyService,
    grant the user (whose first inference of a model registers a request key for it)."""
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), DownloadColumn(),
                  console=console) as bar:  # fmt: skip
        for name, path in files.items():
            sealing = bar.add_task(f"sealing {name}", total=path.stat().st_size)
            sending = bar.add_task(f"uploading {name}", total=None)
            upload_model(
                owner,
                store,
                name,
                path,
                progress=functools.partial(_advance, bar, sealing),
                upload_progress=functools.partial(_sent, bar, sending),
            )
            owner.grant(name, user.principal_id, runtime)
    console.print(
        "3 models sealed here and uploaded to the gateway's model store (signed by the owner, "
        "digest-checked; it holds ciphertext only), their keys given to the KeyService, the "
        f"user granted access in runtimes that measure {next(iter(runtime.measurements))[:16]}… "
        "only"
    )


def _advance(bar: Progress, task: TaskID, done: int) -> None:
    bar.update(task, completed=done)


def _sent(bar: Progress, task: TaskID, done: int, total: int) -> None:
    bar.update(task, completed=done, total=total)


def infer_all(owner: Owner, user: User, files: dict[str, Path]) -> list[bool]:
    import onnxruntime as ort

    photo = sample_image_path()
    matches = []
    rows: list[tuple[str, Inference]] = []

    def plain(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(
            str(files[name]), options, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))

    # MobileNetV2: the photo, ImageNet preprocessing, top-5.
    spec = get_spec("mobilenet-v2")
    inputs = spec.preprocess(photo)
    sealed = user.infer(owner.model_id("mobilenet-v2"), inputs)
    reference = plain("mobilenet-v2", inputs)
    ours, theirs = (
        spec.postprocess(sealed.outputs, inputs)[0],
        spec.postprocess(reference, inputs)[0],
    )
    same = [s.index for s in ours] == [s.index for s in theirs] and np.allclose(
        sealed.outputs["logits"], reference["logits"], rtol=1e-4, atol=1e-5
    )
    matches.append(same)
    rows.append(("mobilenet-v2", sealed))
    console.print("\n[bold]MobileNetV2[/] on grace_hopper.jpg: top-5 classes (sealed | plain)")
    for a, b in zip(ours, theirs, strict=True):
        console.print(f"  class {a.index:>4} {a.score:.4f}   |   class {b.index:>4} {b.score:.4f}")
    console.print(
        f"  match: {_yes(same)}.  [dim]MobileNetV2 here has seeded synthetic weights (the zoo "
        "builds the architecture, not a trained model): its top classes are not meaningful; "
        "they show that the sealed runtime computes exactly what onnxruntime does.[/]"
    )

    # open_nsfw: the same photo, its own preprocessing, P(nsfw).
    spec = get_spec("open-nsfw")
    inputs = spec.preprocess(photo)
    sealed = user.infer(owner.model_id("open-nsfw"), inputs)
    reference = plain("open-nsfw", inputs)
    ours_p = float(sealed.outputs["outputs"][0, 1])
    theirs_p = float(reference["outputs"][0, 1])
    same = bool(np.allclose(sealed.outputs["outputs"], reference["outputs"], rtol=1e-4, atol=1e-5))
    matches.append(same)
    rows.append(("open-nsfw", sealed))
    console.print(
        f"\n[bold]open_nsfw[/] (pretrained Yahoo model) on grace_hopper.jpg: "
        f"P(nsfw) = {ours_p:.4f} sealed | {theirs_p:.4f} plain; match: {_yes(same)}"
    )

    # MiniLM: two sentences, tokenized here, mean-pooled and normalized here.
    spec = get_spec("minilm-int8")
    inputs = spec.preprocess(SENTENCES)
    sealed = user.infer(owner.model_id("minilm-int8"), inputs)
    reference = plain("minilm-int8", inputs)
    ours_e = np.asarray(spec.postprocess(sealed.outputs, inputs))
    theirs_e = np.asarray(spec.postprocess(reference, inputs))
    same = bool(np.allclose(ours_e, theirs_e, rtol=1e-4, atol=1e-5))
    matches.append(same)
    rows.append(("minilm-int8", sealed))
    console.print("\n[bold]MiniLM[/] (pretrained all-MiniLM-L6-v2, int8) embeds two sentences:")
    for sentence in SENTENCES:
        console.print(f"  \u2022 {sentence}")
    console.print(
        f"  cosine similarity {float(ours_e[0] @ ours_e[1]):.4f} sealed | "
        f"{float(theirs_e[0] @ theirs_e[1]):.4f} plain; embeddings match: {_yes(same)}"
    )
    show_requests("The three requests", rows)
    return matches


def burst(owner: Owner, user: User) -> None:
    """Concurrent requests over the three models: the router packs them on two instances."""
    photo = sample_image_path()
    inputs = {
        "mobilenet-v2": get_spec("mobilenet-v2").preprocess(photo),
        "open-nsfw": get_spec("open-nsfw").preprocess(photo),
        "minilm-int8": get_spec("minilm-int8").preprocess(SENTENCES),
    }
    order = [MODELS[i % 3] for i in range(12)]

    def one(name: str) -> tuple[str, Inference]:
        result = user.infer(owner.model_id(name), inputs[name], retries=2)
        return name, result

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        rows = list(pool.map(one, order))
    show_requests("A burst of 12 concurrent requests over the three models", rows)


def refused(owner: Owner, stranger: User) -> None:
    """A registered user with a request key but no grant gets the fixed denial."""
    model_id = owner.model_id("open-nsfw")
    inputs = get_spec("open-nsfw").example_inputs(0)
    try:
        stranger.infer(model_id, inputs)  # registers its request key first
    except AccessDenied as exc:
        console.print(
            f"\nA user without a grant sends a request: [bold]{exc}[/] (no key was released)"
        )
    else:
        raise SystemExit("an ungranted user was served: that must never happen")


SHORT = {"mobilenet-v2": "MobileNetV2", "open-nsfw": "open_nsfw", "minilm-int8": "MiniLM"}


def show_requests(title: str, rows: list[tuple[str, Inference]]) -> None:
    table = Table(title=f"{title} (ms)", title_justify="left", header_style="bold")
    for column in ("model", "on", "route", "queue", "cold start", "load", "infer", "total"):
        table.add_column(column, justify="left" if column in ("model", "on", "route") else "right")
    for name, result in rows:
        t = result.timings
        route = result.route
        kind = "-" if route is None else route.kind + ("+load" if route.load else "")
        table.add_row(
            SHORT[name],
            f"i{result.instance_id}",
            kind,
            _ms(t.get("queue")),
            _ms(t.get("cold_start")),
            _ms(t.get("model_load")),
            _ms(t.get("inference")),
            _ms(t.get("gateway")),
        )
    console.print()
    console.print(table)
    reasons = []
    for name, result in rows:
        if result.route is not None and (result.route.kind != "run" or result.route.load):
            reasons.append(f"  {SHORT[name]}: {result.route.describe()}")
    if reasons:
        console.print("Why (the packer's reasons for starts and loads):")
        for line in reasons:
            console.print(escape(line), soft_wrap=True)


def show_platform(user: User) -> None:
    doc = user.gateway.platform(recent=0)
    counters = doc["counters"]
    console.print(
        f"\nplatform ({doc['policy']} policy): {len(doc['instances'])} instances alive, "
        f"{counters['cold_starts']} cold starts, {counters['model_loads']} model loads, "
        f"{doc['gb_seconds']:.1f} GB-s billed so far"
    )
    for inst in doc["instances"]:
        models = ", ".join(SHORT.get(m.rsplit("/", 1)[-1], m) for m in inst["models"]) or "-"
        console.print(
            f"  i{inst['instance_id']}: {models} resident ({inst['served']} requests, "
            f"{inst['gb_s']:.1f} GB-s)"
        )


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _yes(same: bool) -> str:
    return "[green]yes[/]" if same else "[red]NO[/]"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
