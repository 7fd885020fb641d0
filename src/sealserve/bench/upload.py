"""``sealserve bench upload``: a model's way into the store and out to an instance, against
copying the file on the same disk.

A model of ``--size-mb`` (100 MB; random bytes: sealing does not look inside) is sealed once.
Then, interleaved, medians of ``--repeats`` rounds, in one run:

* ``copy`` (the baseline): ``shutil.copyfile`` of the sealed file to the same disk, then
  ``fsync`` (the store syncs what it commits too);
* ``seal``: sealing the plaintext into a spool file while hashing it, what ``owner upload``
  does before it sends anything;
* ``upload``: :class:`~sealserve.client.StoreClient` sending the sealed file to a gateway in
  another process (its upload API only), in 8 MiB signed chunks over loopback, and the commit
  (digest checked, the staged file adopted by the store): over HTTP and HTTPS into the
  directory store (a rename), and over HTTP into object storage through fsspec (``file://``:
  the object code path; the commit writes the object);
* ``fetch``: what an instance host does when its runtime asks for the model: one
  digest-checked read into a buffer (its shared-memory loan), from the directory store and from
  the fsspec store.

Figures are MB/s (10^6 bytes) of the sealed model, and each case's ratio to the copy.  The
files are in the page cache for every case alike (the model was just written), so the ratios
compare the paths, not the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Final, cast

import typer
from rich.console import Console

from sealserve._tls import make_local_ca
from sealserve.bench._common import environment, interleaved, median, print_table, write_json
from sealserve.client import StoreClient
from sealserve.crypto import Identity, SymmetricKey, seal_model
from sealserve.instance import ModelStore, ObjectModelStore

__all__ = ["register", "run_upload_bench"]

_MB: Final = 1e6
_IO: Final = 1 << 20
_START_TIMEOUT_S: Final = 60.0


class _Hashing:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hasher = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        return self.out.write(data)


@contextlib.contextmanager
def _upload_server(store: str, work: Path, tls: tuple[Path, Path] | None) -> Iterator[str]:
    """A gateway process serving the upload API over ``store``; its URL."""
    command = [sys.executable, "-m", "sealserve.bench._upload_server", "--store", store,
               "--staging", str(work)]  # fmt: skip
    if tls is not None:
        command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the upload server did not start (status {process.wait(10)})")
        yield str(json.loads(line)["url"])
    finally:
        process.terminate()
        try:
            process.wait(_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(_IO, left)
            fh.write(os.urandom(n))
            left -= n


def run_upload_bench(
    *, size_mb: float = 100.0, repeats: int = 5, work_dir: Path | None = None
) -> dict[str, Any]:
    """Measure every case (see the module docstring); the JSON document."""
    work = Path(tempfile.mkdtemp(prefix="sealserve-bench-upload-", dir=work_dir))
    try:
        return _run(work, int(size_mb * _MB), repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, plain_size: int, repeats: int) -> dict[str, Any]:
    identity = Identity.generate()
    model_id = f"{identity.principal_id}/bench"
    key = SymmetricKey.generate()
    plain = work / "model.bin"
    _write_random(plain, plain_size)
    sealed = work / "sealed.bin"
    with plain.open("rb") as src, sealed.open("wb") as dst:
        sink = _Hashing(dst)
        seal_model(key, src, cast(BinaryIO, sink), model_id=model_id, version=1)
    size = sealed.stat().st_size
    digest = sink.hasher.hexdigest()
    directory = ModelStore(work / "store")
    directory.root.mkdir()
    objects_url = f"file://{work / 'objects'}"
    ca = make_local_ca(work / "tls", hosts=["127.0.0.1"])
    buffer = memoryview(bytearray(size))

    def copy() -> None:
        target = work / "copy.bin"
        shutil.copyfile(sealed, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def seal() -> None:
        with plain.open("rb") as src, (work / "spool.bin").open("wb") as dst:
            seal_model(key, src, cast(BinaryIO, _Hashing(dst)), model_id=model_id, version=1)

    def uploader(url: str, ca_bundle: Path | None) -> Callable[[], None]:
        def upload() -> None:
            with (
                StoreClient(url, identity=identity, ca_bundle=ca_bundle) as client,
                sealed.open("rb") as fh,
            ):
                stored = client.upload(model_id, fh, size=size, digest=digest, key_version=1)
            if stored.digest != f"sha256:{digest}":
                raise AssertionError("the store holds other bytes than were sent")

        return upload

    def fetcher(store: ModelStore | ObjectModelStore) -> Callable[[], None]:
        def fetch() -> None:
            manifest = store.read_into(model_id, buffer)
            if manifest.digest != digest:
                raise AssertionError("the store gave other bytes than were uploaded")

        return fetch

    with (
        _upload_server(str(directory.root), work, None) as http_dir,
        _upload_server(str(directory.root), work, (ca.server.cert, ca.server.key)) as https_dir,
        _upload_server(objects_url, work / "obj-staging", None) as http_obj,
    ):
        cases: dict[str, Callable[[], None]] = {
            "copy (same disk, fsync)": copy,
            "seal (into the spool, hashing)": seal,
            "upload, HTTP, directory store": uploader(http_dir, None),
            "upload, HTTPS, directory store": uploader(https_dir, ca.ca_bundle),
            "upload, HTTP, object store (fsspec)": uploader(http_obj, None),
            "fetch, directory store": fetcher(directory),
            "fetch, object store (fsspec)": fetcher(ObjectModelStore(objects_url)),
        }
        for case in cases.values():  # a warm-up round that also puts the model in each store
            case()

        def timed(fn: Callable[[], None]) -> Callable[[], float]:
            def run() -> float:
                start = time.perf_counter()
                fn()
                return time.perf_counter() - start

            return run

        samples = interleaved({name: timed(fn) for name, fn in cases.items()}, repeats=repeats)
    copy_s = median(samples["copy (same disk, fsync)"])
    rows: dict[str, Any] = {}
    for name, values in samples.items():
        seconds = median(values)
        rows[name] = {
            "seconds": seconds,
            "mb_per_s": size / _MB / seconds,
            "over_copy": seconds / copy_s,
            "speed_vs_copy": copy_s / seconds,
        }
    return {
        "benchmark": "upload",
        "sealed_bytes": size,
        "plain_bytes": plain_size,
        "repeats": repeats,
        "chunk_bytes": 8 << 20,
        "environment": environment(),
        "cases": rows,
        "samples_s": samples,
    }


def _print(doc: Mapping[str, Any], console: Console) -> None:
    rows = [
        [name, r["mb_per_s"], r["seconds"], r["speed_vs_copy"]] for name, r in doc["cases"].items()
    ]
    print_table(
        f"a {doc['sealed_bytes'] / _MB:.0f} MB sealed model, medians of {doc['repeats']} "
        "interleaved rounds",
        ["case", "MB/s", "seconds", "speed / copy"],
        rows,
        console=console,
    )


def _upload(
    size_mb: Annotated[float, typer.Option(min=1.0, help="The model's size, MB.")] = 100.0,
    repeats: Annotated[int, typer.Option(min=1, help="Interleaved rounds per case.")] = 5,
    work_dir: Annotated[
        Path | None,
        typer.Option("--dir", help="Where the files go (default: the temporary directory)."),
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="20 MB, 3 rounds.")] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results here.")
    ] = None,
) -> None:
    """Upload (HTTP, HTTPS; directory and object store) and fetch of a sealed model,
    against copying the file on the same disk."""
    if quick:
        size_mb, repeats = 20.0, 3
    doc = run_upload_bench(size_mb=size_mb, repeats=repeats, work_dir=work_dir)
    _print(doc, Console())
    if json_path is not None:
        write_json(json_path, doc)
        Console().print(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add ``upload`` to the ``sealserve bench`` group."""
    app.command("upload")(_upload)
