"""The runtime's round trip, its polls and the probe, routed straight from the ASGI scope.

``POST /v1/challenges``, ``POST /v1/releases``, ``POST /v1/revocations``, ``GET /healthz``
and the health probes (``/v2/health/live``, ``/v2/health/ready``) carry the key-release round
trip, the runtimes' revocation polls and the probes hundreds of times a second.
:class:`HotPath` sends them to their :class:`~._endpoints.Endpoints` operation straight from
the ASGI scope, in front of the FastAPI application that serves every route (these too, by the
same operations, so the OpenAPI document describes what is served; a test checks both give
the same bytes).

Kept for a measured reason: FastAPI's middleware stack, routing table, dependency solving and
request object cost more than the challenge itself.  Measured in-process (ASGI calls, no
network; medians of 5 interleaved rounds of 2,000, the build machine busy): a challenge takes
112 us through this router against 299 us through FastAPI, a healthz 19 us against 325 us.
``create_app(service, hot_path=False)`` serves everything through FastAPI.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from sealserve.keyservice._endpoints import DENIAL, Answer, Endpoints
from sealserve.protocol import wire

__all__ = ["HEALTHZ_PATH", "HotPath"]

HEALTHZ_PATH: Final = "/healthz"
_CHALLENGES: Final = wire.API_PREFIX + "/challenges"
_RELEASES: Final = wire.API_PREFIX + "/releases"
_REVOCATIONS: Final = wire.API_PREFIX + "/revocations"
_JSON: Final = (b"content-type", b"application/json")


class HotPath:
    """ASGI: the three endpoints directly, everything else to ``fallback``.

    Bodies over ``max_body_bytes`` are refused by their Content-Length before they are read,
    or as soon as the bytes read pass the limit: on these paths with the fixed denial.
    """

    def __init__(self, endpoints: Endpoints, fallback: ASGIApp, *, max_body_bytes: int) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
        self.endpoints = endpoints
        self.fallback = fallback
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            try:
                if path == _RELEASES and method == "POST":
                    body = await _read_body(scope, receive, self._limit)
                    await _send(send, await self.endpoints.release(body))
                    return
                if path == _REVOCATIONS and method == "POST":
                    body = await _read_body(scope, receive, self._limit)
                    await _send(send, await self.endpoints.revocations(body))
                    return
                if path == _CHALLENGES and method == "POST":
                    if await _read_body(scope, receive, self._limit) is None:
                        await _send(send, (403, DENIAL, {}))
                    else:
                        await _send(send, self.endpoints.challenge())
                    return
            except _Disconnected:
                return
            if method == "GET":
                if path == HEALTHZ_PATH:
                    await _send(send, self.endpoints.healthz())
                    return
                probe = self.endpoints.probe(path)
                if probe is not None:
                    await _send(send, probe)
                    return
        await self.fallback(scope, receive, send)


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request body; ``None`` when it is over ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    return None
            except ValueError:
                return None
    chunks: list[bytes] = []
    size = 0
    while True:  # bounded: the server delivers a finite body, and we stop past the limit
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, answer: Answer) -> None:
    status, content, extra = answer
    headers = [_JSON, (b"content-length", str(len(content)).encode())]
    for name, value in extra.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
