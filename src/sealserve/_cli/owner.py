"""``sealserve owner …``: a model owner's identity, model keys and grants."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sealserve._cli._connection import Connection, principal_command
from sealserve._cli._principal import (
    AllowDebugOpt,
    TcbOpt,
    init_identity,
    load_or_create_key,
    register_principal,
    runtime_policy_or_default,
)
from sealserve._cli.keyservice import (
    CaBundleOpt,
    DataDirOpt,
    IdentityOpt,
    JsonOpt,
    MeasurementOpt,
    PolicyFileOpt,
    ReferenceValuesOpt,
    build_policy,
    check_policy_flags,
    emit,
    fail,
    guarded,
    read_secret_file,
    resolve_ca_bundle,
    resolve_data_dir,
    write_secret_file,
)
from sealserve.errors import Conflict, SealserveError

if TYPE_CHECKING:
    from sealserve.protocol import AuditPoint

__all__ = ["app"]

app = typer.Typer(
    help="Model owners: identity, model keys, grants and revocations.", no_args_is_help=True
)

ROLE = "owner"


def _owner(conn: Connection) -> Any:
    from sealserve.client import Owner

    return conn.open(Owner, ROLE)


@app.command()
def init(
    identity: IdentityOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False
) -> None:
    """Create the owner's identity file (0600), or show the existing one."""
    init_identity(identity, data_dir, ROLE, json_out)


@principal_command(app)
def register(
    *,
    conn: Connection,
) -> None:
    """Register the owner's public key with the (attested) KeyService."""
    owner = _owner(conn)
    register_principal(owner, ROLE, conn.json_out)


@principal_command(app, "put-key")
def put_key(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    key_file: Annotated[
        Path | None,
        typer.Option(help="The model key file (32 bytes, 0600); created when absent."),
    ] = None,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Replace the current key (next version).")
    ] = False,
    *,
    conn: Connection,
) -> None:
    """Put a model key for model NAME: version 1, or with --rotate the next version.

    The key is read from --key-file if that exists, else generated into it (default:
    <data-dir>/owner/model-keys/NAME.v<version>.key); seal the model with that key.
    """
    from sealserve.crypto import SymmetricKey

    folder = conn.folder
    owner = _owner(conn)
    with contextlib.closing(owner):
        version = guarded(lambda: owner.model(name).key_version + 1) if rotate else 1
        path = key_file or folder / ROLE / "model-keys" / f"{name}.v{version}.key"
        key = guarded(lambda: load_or_create_key(path, SymmetricKey))
        try:
            receipt = owner.put_model_key(name, key, version=version)
        except Conflict:
            fail(f"model {owner.model_id(name)} already has a key; use --rotate to replace it")
        except (SealserveError, ValueError, OSError) as exc:
            fail(str(exc))
        emit(
            conn.json_out,
            {
                "model_id": receipt.model_id,
                "version": receipt.version,
                "revocation_epoch": receipt.revocation_epoch,
                "key_file": str(path),
                "key_fingerprint": key.fingerprint,
            },
            f"model {receipt.model_id} key version {receipt.version} stored "
            f"(key file {path}, fingerprint {key.fingerprint})",
        )


@principal_command(app)
def grant(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    user_id: Annotated[str, typer.Argument(help="The user's principal id.")],
    measurement: MeasurementOpt = None,
    reference_values: ReferenceValuesOpt = None,
    policy: PolicyFileOpt = None,
    allow_debug: AllowDebugOpt = False,
    tcb_status: TcbOpt = None,
    *,
    conn: Connection,
) -> None:
    """Let USER_ID use model NAME in runtimes that satisfy the policy."""
    runtime_policy = guarded(
        lambda: build_policy(
            measurement,
            policy,
            allow_debug=allow_debug,
            tcb_statuses=tcb_status,
            reference_values=reference_values,
        )
    )
    owner = _owner(conn)
    with contextlib.closing(owner):
        epoch = guarded(lambda: owner.grant(name, user_id, runtime_policy))
        emit(
            conn.json_out,
            {
                "model_id": owner.model_id(name),
                "user_id": user_id,
                "revocation_epoch": epoch,
                "policy": runtime_policy.to_dict(),
            },
            f"granted {user_id} access to {owner.model_id(name)}",
        )


@principal_command(app)
def revoke(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    user_id: Annotated[str, typer.Argument(help="The user's principal id.")],
    *,
    conn: Connection,
) -> None:
    """Revoke USER_ID's access to model NAME (effective for the next release)."""
    owner = _owner(conn)
    with contextlib.closing(owner):
        epoch = guarded(lambda: owner.revoke(name, user_id))
        emit(
            conn.json_out,
            {"model_id": owner.model_id(name), "user_id": user_id, "revocation_epoch": epoch},
            f"revoked {user_id} from {owner.model_id(name)} (revocation epoch {epoch})",
        )


@principal_command(app)
def show(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    *,
    conn: Connection,
) -> None:
    """Show model NAME's key version and the users granted access."""
    owner = _owner(conn)
    with contextlib.closing(owner):
        info = guarded(lambda: owner.model(name))
        lines = [f"model {info.model_id}", f"key version {info.key_version}"]
        lines += [f"granted {u}" for u in info.grants] or ["no grants"]
        emit(
            conn.json_out,
            {
                "model_id": info.model_id,
                "key_version": info.key_version,
                "grants": list(info.grants),
            },
            "\n".join(lines),
        )


GatewayOpt = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        help="Gateway URL (default: the one 'sealserve up' on the data dir announced, else "
        "the settings').",
    ),
]


@principal_command(app)
def audit(
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Verify from the checkpoint kept by the last --verify (exit 1, saying what, "
            "when the log was rewritten or truncated) and keep the new one.",
        ),
    ] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Verify from the start (and through the checkpoint kept, if any)."
        ),
    ] = False,
    *,
    conn: Connection,
) -> None:
    """The KeyService's audit log: this owner's entries, hash-chained to a checkpoint the
    attested KeyService signed (every other entry is checked through its digest).

    With --verify, the checkpoint verified last time is kept in
    <data-dir>/owner/audit-checkpoints.json (per KeyService): a history rewritten or cut back
    before it is then detected, even after the KeyService restarted.
    """
    from sealserve.errors import AuditLogTampered

    folder = conn.folder
    owner = _owner(conn)
    path = folder / ROLE / "audit-checkpoints.json"
    with contextlib.closing(owner):
        ks_id = guarded(lambda: owner.keyservice.keyservice.keyservice_id)
        kept = guarded(lambda: _read_checkpoints(path)).get(ks_id) if verify else None
        since = None if full or kept is None else kept
        try:
            result = owner.audit(since=since, through=kept if full else None)
        except AuditLogTampered as exc:
            fail(f"the audit log does not verify: {exc}")
        except (SealserveError, ValueError, OSError) as exc:
            fail(str(exc) or type(exc).__name__)
        if verify:
            guarded(lambda: _write_checkpoint(path, ks_id, result.checkpoint))
    checkpoint = result.checkpoint
    lines = [
        f"{e['seq']:>8}  {e['event']:<18} {e.get('model_id') or '':<40.40} "
        f"{(e.get('user_id') or '')[:16]}"
        for e in result.entries
    ]
    lines.append(
        f"verified {result.verified} entries up to checkpoint {checkpoint.seq} "
        f"(chain {checkpoint.chain.hex()[:16]}...)" + (f"; kept in {path}" if verify else "")
    )
    emit(
        conn.json_out,
        {
            "entries": list(result.entries),
            "verified": result.verified,
            "checkpoint": checkpoint.to_json(),
            "since": None if since is None else since.to_json(),
            "keyservice_id": ks_id,
        },
        "\n".join(lines),
    )


def _read_checkpoints(path: Path) -> dict[str, AuditPoint]:
    import json

    from sealserve.protocol import AuditPoint

    if not path.exists():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a checkpoint file")
    return {str(k): AuditPoint.from_json(v) for k, v in doc.items()}


def _parse_max_dims(values: list[str] | None) -> dict[str, list[int | None]]:
    """``INPUT=D0,D1,...`` options (``-`` for no bound) as ``{input: [max or None]}``."""
    out: dict[str, list[int | None]] = {}
    for value in values or []:
        name, sep, dims = value.partition("=")
        if not sep or not name or not dims:
            raise ValueError(f"--max-dim has value {value!r}; expected INPUT=D0,D1,...")
        if name in out:
            raise ValueError(f"--max-dim gives input {name!r} twice")
        maxima: list[int | None] = []
        for dim in dims.split(","):
            dim = dim.strip()
            if dim == "-":
                maxima.append(None)
            elif dim.isdecimal() and dim.isascii():
                maxima.append(int(dim))
            else:
                raise ValueError(f"--max-dim has value {value!r}; {dim!r} is not an int or '-'")
        out[name] = maxima
    return out


def _declare_limits(
    model: Path,
    folder: Path,
    name: str,
    max_batch: int | None,
    max_dims: dict[str, list[int | None]],
) -> Path:
    """Write MODEL with its input limits declared to the owner's folder (kept byte-identical
    across runs, so an interrupted upload of it resumes); its path."""
    import os

    from sealserve.client import declare_input_limits

    declared = declare_input_limits(model.read_bytes(), max_batch=max_batch, max_dims=max_dims)
    target = folder / ROLE / "declared" / f"{name}.onnx"
    if target.is_file() and target.read_bytes() == declared:
        return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(declared)
    os.replace(tmp, target)
    return target


def _write_checkpoint(path: Path, keyservice_id: str, point: AuditPoint) -> None:
    import json
    import os

    current = _read_checkpoints(path)
    current[keyservice_id] = point
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({k: v.to_json() for k, v in current.items()}, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, path)


@principal_command(app)
def upload(
    model: Annotated[
        Path, typer.Argument(help="The model file (.onnx), in the clear.", dir_okay=False)
    ],
    name: Annotated[
        str, typer.Option("--name", help="The model's name; its id is <owner_id>/<name>.")
    ],
    gateway: GatewayOpt = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Write straight into this model store (a directory or an fsspec URL you "
            "have write access to) instead of uploading through the gateway."
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            help="Seal with this model key file (32 bytes, 0600); default: a new key, saved "
            "to <data-dir>/owner/model-keys/NAME.v<version>.key."
        ),
    ] = None,
    grant_to: Annotated[
        list[str] | None,
        typer.Option("--grant", help="Also grant this user id access to the model; repeat."),
    ] = None,
    measurement: MeasurementOpt = None,
    reference_values: ReferenceValuesOpt = None,
    policy: PolicyFileOpt = None,
    allow_debug: AllowDebugOpt = False,
    tcb_status: TcbOpt = None,
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            help="Go on after a broken connection this many times in a row (pauses doubling "
            "from 0.5 s to 8 s); a later run resumes what is left.",
        ),
    ] = 5,
    ca_bundle: CaBundleOpt = None,
    max_batch: Annotated[
        int | None,
        typer.Option(
            "--max-batch",
            min=1,
            help="Declare the largest batch (first dimension of the inputs whose first "
            "dimension is dynamic) inside the model, sealed with it; the runtime refuses a "
            "larger request with 400 before running it.",
        ),
    ] = None,
    max_dim: Annotated[
        list[str] | None,
        typer.Option(
            "--max-dim",
            help="Declare the largest value of each dimension of an input: INPUT=D0,D1,... "
            "(one per dimension; '-' for no bound; a static dimension takes '-' or its size). "
            "Repeat per input.",
        ),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Seal MODEL under a new model key, upload it to the gateway's model store (signed,
    in chunks, resumed after a broken connection, digest-checked), and put the key in the
    KeyService (a model that has a key already gets the next version).

    With --grant, also let those users use it in runtimes that satisfy the policy: the
    --measurement or --policy given, else the runtime of the installed code (what
    'sealserve instance measurement' prints).

    With --max-batch / --max-dim, the input limits are written into the model before it is
    sealed (a copy, <data-dir>/owner/declared/NAME.onnx, is what is sealed and sent).
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from sealserve._cli.gateway import gateway_url
    from sealserve.client import StoreClient, check_onnx_model, upload_model
    from sealserve.crypto import SymmetricKey

    check_policy_flags(
        measurement,
        policy,
        allow_debug=allow_debug,
        tcb_statuses=tcb_status,
        reference_values=reference_values,
    )
    if not model.is_file():
        fail(f"no model file at '{model}'", 2)
    try:
        check_onnx_model(model)  # before connecting to anything or sealing a byte
    except (ValueError, OSError) as exc:
        fail(str(exc), 2)
    folder = conn.folder
    if max_batch is not None or max_dim:
        try:
            model = _declare_limits(model, folder, name, max_batch, _parse_max_dims(max_dim))
        except (ValueError, OSError) as exc:
            fail(f"the input limits are refused: {exc}", 2)
    bundle = resolve_ca_bundle(ca_bundle, folder)
    runtime_policy = (
        guarded(
            lambda: runtime_policy_or_default(
                folder, measurement, policy, allow_debug, tcb_status, reference_values
            )
        )
        if grant_to
        else None
    )
    key = (
        guarded(lambda: SymmetricKey.from_bytes(read_secret_file(key_file)))
        if key_file is not None
        else SymmetricKey.generate()
    )
    owner = _owner(conn)
    size = model.stat().st_size
    resumed = False
    with contextlib.ExitStack() as stack:
        stack.callback(owner.close)
        with Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
            disable=conn.json_out,
        ) as bar:
            sealing = bar.add_task("sealing", total=size)
            sending = bar.add_task("uploading", total=None, visible=store is None)

            def sealed(done: int) -> None:
                bar.update(sealing, completed=done)

            def sent(done: int, total: int) -> None:
                bar.update(sending, completed=done, total=total)

            if store is not None:
                where = store
                target = guarded(lambda: _direct_store(store))
                receipt = guarded(
                    lambda: upload_model(owner, target, name, model, key=key, progress=sealed)
                )
            else:
                where = gateway_url(gateway, folder)
                client = guarded(
                    lambda: StoreClient(
                        where, identity=owner.identity, ca_bundle=bundle, retries=retries
                    ).open()
                )
                stack.callback(client.close)
                receipt, key, resumed = guarded(
                    lambda: _upload_resumably(
                        owner,
                        client,
                        name,
                        model,
                        folder,
                        key,
                        key_file is not None,
                        sealed,
                        sent,
                    )
                )
        saved = key_file
        if saved is None:
            saved = folder / ROLE / "model-keys" / f"{name}.v{receipt.key_version}.key"
            guarded(lambda: write_secret_file(saved, key.to_bytes()))
        granted = []
        for user_id in grant_to or []:

            def grant_one(user: str = user_id) -> int:
                return int(owner.grant(name, user, runtime_policy))

            guarded(grant_one)
            granted.append(user_id)
    doc = {
        "model_id": receipt.model_id,
        "key_version": receipt.key_version,
        "plain_bytes": receipt.plain_bytes,
        "sealed_bytes": receipt.sealed_bytes,
        "digest": f"sha256:{receipt.digest}",
        "key_fingerprint": receipt.key_fingerprint,
        "key_file": str(saved),
        "store": where,
        "resumed": resumed,
        "granted": granted,
        "policy": runtime_policy.to_dict() if runtime_policy is not None else None,
    }
    lines = [
        *(["resumed the upload an earlier run left unfinished"] if resumed else []),
        f"model {receipt.model_id} key version {receipt.key_version}",
        f"sealed {receipt.plain_bytes / 2**20:.1f} MiB and stored it through {where} "
        f"(sha256:{receipt.digest[:16]}...)",
        f"key fingerprint {receipt.key_fingerprint}, saved to {saved}",
    ]
    if runtime_policy is not None:
        lines += [f"granted {u}" for u in granted]
        lines.append(f"  in runtimes measuring {', '.join(sorted(runtime_policy.measurements))}")
    emit(conn.json_out, doc, "\n".join(lines))


def _upload_resumably(
    owner: Any,
    client: Any,
    name: str,
    model: Path,
    folder: Path,
    key: Any,
    own_key_file: bool,
    sealed_progress: Any,
    sent: Any,
) -> tuple[Any, Any, bool]:
    """Seal into ``<data-dir>/owner/uploads/NAME/`` and upload from there; a run that finds
    what an interrupted one left (the same model file, still the next key version) sends
    those bytes again, resuming the gateway's upload, instead of sealing anew (what a
    refusal leaves is removed: it would be refused again).  The receipt, the key used, and
    whether it resumed."""
    from sealserve.client import seal_for_upload, send_sealed
    from sealserve.crypto import SymmetricKey
    from sealserve.errors import AccessDenied, GatewayError, NotFound

    pending = folder / ROLE / "uploads" / name
    state_path = pending / "state.json"
    st = model.stat()
    source = {"path": str(model.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        version = owner.model(name).key_version + 1
    except NotFound:
        version = 1
    state = _read_state(state_path)
    sealed = _pending_upload(state, source, version, pending, key, own_key_file)
    resumable = sealed is not None
    if sealed is not None and state is not None:
        if not own_key_file:
            key = SymmetricKey.from_bytes(read_secret_file(pending / "key"))
        upload_id = str(state.get("upload_id", ""))
        sealed_progress(st.st_size)
    else:
        shutil.rmtree(pending, ignore_errors=True)
        pending.mkdir(mode=0o700, parents=True)
        if not own_key_file:
            write_secret_file(pending / "key", key.to_bytes())
        sealed = seal_for_upload(
            owner, name, model, pending / "sealed", key=key, version=version,
            progress=sealed_progress,
        )  # fmt: skip
        state = {"source": source, "sealed": sealed.to_json(), "key_fingerprint": key.fingerprint}
        _write_state(state_path, state)
        upload_id = ""

    def began(new_id: str) -> None:
        assert state is not None
        state["upload_id"] = new_id
        _write_state(state_path, state)

    try:
        receipt = send_sealed(
            owner, client, sealed, key=key, upload_id=upload_id, on_begin=began, progress=sent
        )
    except (GatewayError, AccessDenied) as exc:
        if not isinstance(exc, GatewayError) or not exc.retryable:
            shutil.rmtree(pending, ignore_errors=True)  # refused: resuming would not help
            raise
        raise GatewayError(
            f"{exc}; the sealed model waits in '{pending}': run the same command again to "
            "resume the upload"
        ) from exc
    shutil.rmtree(pending, ignore_errors=True)
    return receipt, key, resumable


def _pending_upload(
    state: dict[str, Any] | None,
    source: dict[str, Any],
    version: int,
    pending: Path,
    key: Any,
    own_key_file: bool,
) -> Any:
    """The :class:`~sealserve.client.SealedUpload` an interrupted run left in ``pending``
    if it is this model file sealed for ``version`` (under ``key`` when the owner named a
    key file, else under the key it saved); else ``None`` (seal anew)."""
    from sealserve.client import SealedUpload

    if state is None or state.get("source") != source:
        return None
    doc = state.get("sealed")
    if not isinstance(doc, dict):
        return None
    try:
        sealed = SealedUpload.from_json(doc)
    except (KeyError, ValueError):
        return None
    if sealed.key_version != version or sealed.path != pending / "sealed":
        return None
    if not sealed.path.is_file() or sealed.path.stat().st_size != sealed.size:
        return None
    if own_key_file:
        return sealed if state.get("key_fingerprint") == key.fingerprint else None
    return sealed if (pending / "key").is_file() else None


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_state(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _direct_store(location: str) -> Any:
    from sealserve.instance import ModelStore, open_store

    store = open_store(location)
    if isinstance(store, ModelStore):
        store.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return store


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    gateway: GatewayOpt = None,
    digest: Annotated[
        str | None,
        typer.Option(help="Delete only this version (sha256:...); default: the one stored now."),
    ] = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = None,
    identity: IdentityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete model NAME from the gateway's model store (signed: only its owner may).

    Its key stays in the KeyService (revoke the grants, or upload again to rotate it).
    """
    from sealserve._cli._principal import load_identity
    from sealserve._cli.gateway import gateway_url
    from sealserve.client import StoreClient

    folder = resolve_data_dir(data_dir)
    ident = guarded(lambda: load_identity(folder, identity, ROLE))
    model_id = f"{ident.principal_id}/{name}"
    where = gateway_url(gateway, folder)
    bundle = resolve_ca_bundle(ca_bundle, folder)

    def remove() -> Any:
        with StoreClient(where, identity=ident, ca_bundle=bundle) as client:
            return client.delete(model_id, digest=digest)

    deleted = guarded(remove)
    emit(
        json_out,
        {"model_id": deleted.model_id, "digest": deleted.digest, "deleted": deleted.deleted},
        f"deleted {deleted.model_id} ({deleted.digest[:23]}...) from the store at {where}",
    )
