"""The plain side of ``sealserve bench serve``: onnxruntime behind a minimal HTTP server.

What a user would run without confidentiality: one process, uvicorn (httptools, uvloop) and a
bare ASGI callable (no framework), one onnxruntime session with the runtime's own session
options (:func:`sealserve.runtime.session_options`: the same intra-op threads, no spinning),
requests run on a pool of ``workers`` threads (onnxruntime releases the GIL).  The body is the
plaintext input in sealserve's tensor container (:func:`sealserve.models.encode_tensors`), the
answer the outputs in the same container: the same bytes the sealed runtime unseals and
seals, so the two servers differ by confidentiality and its path only.

::

    python -m sealserve.bench._plain_server --model m.onnx --threads 2 --workers 4 \\
        --ready-file ready.json           # writes {"url", "pid"} once it listens

Only ``POST /infer`` (and ``GET /healthz``); anything else is 404.  A benchmark tool, not a
product: it trusts its loopback client.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PlainApp", "main"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_OCTETS = [(b"content-type", b"application/octet-stream")]


class PlainApp:
    """A bare ASGI app: the body in, ``session.run``, the outputs out."""

    def __init__(self, model: Path, *, threads: int, workers: int) -> None:
        import onnxruntime as ort

        from sealserve.runtime import session_options

        self._session = ort.InferenceSession(
            str(model), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="plain")

    def _run(self, body: bytes) -> bytes:
        from sealserve.protocol import decode_tensors, encode_tensors

        outputs = self._session.run(None, decode_tensors(body, copy=False))
        return encode_tensors(dict(zip(self._outputs, outputs, strict=True)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self._pool.shutdown(wait=True)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await _answer(send, 200, b"ok")
            return
        if scope["path"] != "/infer" or scope["method"] != "POST":
            await _answer(send, 404, b"")
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._pool, self._run, body)
        except Exception:
            await _answer(send, 400, b"")
            return
        await _answer(send, 200, out)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _OCTETS})
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sealserve.bench._plain_server")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ready-file", type=Path, required=True)
    args = p.parse_args(argv)

    from sealserve._serving import ReadyServer, bind_listener, server_config

    app = PlainApp(args.model, threads=args.threads, workers=args.workers)
    sock = bind_listener(args.host, 0, inheritable=False)
    host, port = sock.getsockname()[:2]
    server = ReadyServer(server_config(app, log_level="warning", lifespan="on", graceful_s=5))

    def ready() -> None:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": f"http://{host}:{port}", "pid": os.getpid()}))
        tmp.replace(args.ready_file)

    server.on_ready = ready
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
