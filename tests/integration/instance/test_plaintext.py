"""Plaintext never leaves the runtime.

Inputs carry a unique marker, the model's weights a known byte run, and the outputs are known
too; so are the raw model key and request keys.  After real requests (binary endpoint and
OpenWhisk ``/run``), while the instance is alive, every shared-memory segment that the host
and the runtime hold (through ``/proc/<pid>/fd``), the host's logs (which include the
runtime's), the model store and the KeyService's database are scanned for all of them: nothing
may be found.  Positive controls plant the same markers in a segment, a log and a file and
show the scanner finds them there.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import httpx

from sealserve.bench._runtime_stack import LocalStack, infer_tensors
from sealserve.ipc import Channel, ChannelOptions
from sealserve.protocol import seal_input
from tests.unit.runtime.graphs import marker_floats, marker_model, plain_run

_PIECE = 64


def needles(secret: bytes) -> list[bytes]:
    """A few 64-byte pieces of ``secret`` (a plaintext is found even if cut differently)."""
    if len(secret) <= _PIECE:
        return [secret]
    return [secret[i : i + _PIECE] for i in range(0, len(secret) - _PIECE + 1, len(secret) // 4)]


def shared_segments(pid: int) -> Iterator[tuple[str, Path]]:
    """The shared-memory files ``pid`` holds open: memfds and /dev/shm files."""
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("/memfd:") or target.startswith("/dev/shm/"):
            yield target, entry


def read_data(path: Path) -> Iterator[bytes]:
    """The populated parts of a (sparse) shared-memory file, skipping its holes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError:  # no more data
                return
            while start < end:
                chunk = os.pread(fd, min(end - start, 16 << 20), start)
                if not chunk:
                    return
                yield chunk
                start += len(chunk)
            pos = end
    finally:
        os.close(fd)


def found_in(chunks: Iterator[bytes], secrets: dict[str, list[bytes]]) -> set[str]:
    hits: set[str] = set()
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        for name, pieces in secrets.items():
            if any(p in window for p in pieces):
                hits.add(name)
        tail = chunk[-_PIECE:]
    return hits


def files_under(root: Path) -> Iterator[bytes]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.read_bytes()


def test_the_scanner_finds_planted_markers(tmp_path: Path) -> None:
    """Positive controls: the scan would see a plaintext in each kind of place."""
    marker = marker_floats(99, 256).tobytes()
    secrets = {"marker": needles(marker)}
    with Channel.create(ChannelOptions(arena_bytes=1 << 20, memory="memfd")) as channel:
        sub = channel.subscriber()
        pub = channel.publisher()
        pub.send(b"\x00" * 1000 + marker + b"\x00" * 1000)
        segments = list(shared_segments(os.getpid()))
        assert segments
        hits: set[str] = set()
        for _, path in segments:
            hits |= found_in(read_data(path), secrets)
        assert hits == {"marker"}
        sub.close()
    log = tmp_path / "log"
    log.write_bytes(b"line\n" + marker + b"\n")
    assert found_in(files_under(tmp_path), secrets) == {"marker"}


def test_no_plaintext_outside_the_runtime(stack: LocalStack) -> None:
    assert stack.user is not None
    weights = marker_floats(11, 512)
    onnx = marker_model(weights)
    model = stack.add_model("marker", onnx)
    user = stack.user.principal_id
    inputs = [{"X": marker_floats(100 + i, 512)} for i in range(4)]
    outputs = [plain_run(onnx, x) for x in inputs]
    secrets = {
        "weights": needles(weights.tobytes()),
        "model key": [model.model_key.to_bytes()],
        "request key": [model.request_key.to_bytes()],
        "input subkey": [model.request_key.input_key.to_bytes()],
        "output subkey": [model.request_key.output_key.to_bytes()],
    }
    for i, x in enumerate(inputs):
        secrets[f"input {i}"] = needles(x["X"].tobytes())
        secrets[f"output Z {i}"] = needles(outputs[i]["Z"].tobytes())
    with stack.start_instance(extra=["--log-level", "DEBUG"]) as instance:
        for i in (0, 1):
            got, _ = infer_tensors(
                instance.client, model.request_key, inputs[i], model_id=model.model_id, user_id=user
            )
            assert got["Y"].tobytes() == inputs[i]["X"].tobytes()  # the marker went through
        with httpx.Client(base_url=instance.url, timeout=60) as http:
            assert http.post("/init", json={"value": {}}).status_code == 200
            for i in (2, 3):
                rid = f"scan-{i}"
                sealed = seal_input(model.request_key, inputs[i], model_id=model.model_id,
                                    user_id=user, request_id=rid)  # fmt: skip
                body = {
                    "value": {
                        "model_id": model.model_id,
                        "user_id": user,
                        "request_id": rid,
                        "input": base64.b64encode(sealed).decode(),
                    }
                }
                assert http.post("/run", json=body).status_code == 200  # fmt: skip
            http.get("/v1/stats")
            http.get("/metrics")
        scanned = 0
        seen_bytes = [0]

        def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
            for chunk in chunks:
                seen_bytes[0] += len(chunk)
                yield chunk

        for pid in (instance.popen.pid, instance.runtime_pid):
            for target, path in shared_segments(pid):
                scanned += 1
                hits = found_in(counted(read_data(path)), secrets)
                assert not hits, f"{sorted(hits)} in shared memory {target} of pid {pid}"
        assert scanned >= 4  # two channels, seen from both processes
        assert seen_bytes[0] > 4 * len(inputs[0]["X"].tobytes())  # the frames were read
    logs = instance.log_path.read_bytes()
    assert b"runtime.model_loaded" in logs  # the runtime's own log lines are in there
    places = {
        "host and runtime logs": iter([logs]),
        "model store": files_under(stack.store.root),
        "KeyService database and data": files_under(stack.root / "keyservice"),
        "KeyService log": iter([(stack.root / "keyservice.log").read_bytes()]),
    }
    for name, contents in places.items():
        hits = found_in(contents, secrets)
        assert not hits, f"{sorted(hits)} found in the {name}"
