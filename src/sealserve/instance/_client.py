"""A client of one instance host's binary endpoint (tests, the benchmark, the gateway).

::

    with InstanceClient("http://127.0.0.1:8080") as instance:
        result = instance.infer(model_id=mid, user_id=uid, request_id=rid, sealed_input=env)
        outputs = unseal_output(request_key, result.sealed_output, model_id=mid, ...)

(the host, and so this client, never holds a key: the sealing is the user's, with
:func:`sealserve.protocol.seal_input` and :func:`~sealserve.protocol.unseal_output`).
Error answers become sealserve's exceptions (:func:`~sealserve.protocol.raise_for_error`),
so a caller can tell a retryable failure (``exc.retryable``) from one that will always fail.

It speaks HTTP/1.1 with the standard library, one keep-alive connection per calling thread:
on this hot path (a sealed input of hundreds of KB per request) it costs about a third of what
a general-purpose client does per request, measured in ``sealserve bench runtime``.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from sealserve._resource import Resource
from sealserve.errors import InstanceError
from sealserve.protocol import headers as hd
from sealserve.protocol import raise_for_error

__all__ = ["InferResult", "InstanceClient"]

#: Errors of a kept-alive connection that the server had already closed: retried once.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclasses.dataclass(frozen=True, slots=True)
class InferResult:
    """What ``/v1/infer`` answered: the sealed output and the stage timings (ms)."""

    request_id: str
    sealed_output: bytes
    timings: dict[str, float]


class InstanceClient(Resource):
    """HTTP client of one instance; use it inside ``with`` (or ``open``/``close``).

    Thread-safe: each thread that calls it gets its own connection.  An ``https://`` host is
    verified with ``ssl_context`` (default: the system's roots).  ``control_token`` (the
    host's ready line has it) is sent with :meth:`load` and :meth:`evict`, which need it.
    """

    resource_name = "the instance client"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        control_token: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        super().__init__()
        self.url = url.rstrip("/")
        self._parsed = parsed
        self._timeout_s = timeout_s
        self._ssl = ssl_context
        self._control = (
            {} if control_token is None else {"authorization": f"Bearer {control_token}"}
        )
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    # -- transport -----------------------------------------------------------------------------

    def _connection(self, *, fresh: bool = False) -> http.client.HTTPConnection:
        self._check_opened()
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            host, port = self._parsed.hostname or "", self._parsed.port
            if self._parsed.scheme == "https":
                connection = http.client.HTTPSConnection(
                    host, port, timeout=self._timeout_s, context=self._ssl
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=self._timeout_s)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | bytearray | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = self._connection()
        for attempt in (1, 2):
            reused = connection.sock is not None
            try:
                if connection.sock is not None:
                    connection.sock.settimeout(timeout_s or self._timeout_s)
                else:
                    connection.timeout = timeout_s or self._timeout_s
                connection.request(method, path, body=body, headers=dict(headers or {}))
                response = connection.getresponse()
                data = response.read()
            except _STALE as exc:
                if attempt == 1 and reused:  # the server closed an idle keep-alive connection
                    connection = self._connection(fresh=True)
                    continue
                raise self._unreachable(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise self._unreachable(exc) from None
            if response.will_close:
                connection.close()
            return response.status, response.headers, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _unreachable(self, exc: BaseException) -> InstanceError:
        error = InstanceError(f"the instance at {self.url} is unreachable: {type(exc).__name__}")
        error.retryable = True
        return error

    # -- calls ---------------------------------------------------------------------------------

    def infer(
        self,
        *,
        model_id: str,
        user_id: str,
        request_id: str,
        sealed_input: bytes | bytearray,
        timeout_s: float | None = None,
        deadline_ms: int | None = None,
    ) -> InferResult:
        """Send a sealed input; the sealed output and timings (or the error, raised)."""
        headers = {
            hd.MODEL_HEADER: model_id,
            hd.USER_HEADER: user_id,
            hd.REQUEST_ID_HEADER: request_id,
            "content-type": "application/octet-stream",
        }
        if deadline_ms is not None:
            headers[hd.DEADLINE_HEADER] = str(int(deadline_ms))
        elif timeout_s is not None:
            headers[hd.TIMEOUT_HEADER] = str(int(timeout_s * 1000))
        status, reply_headers, body = self._request(
            "POST",
            "/v1/infer",
            sealed_input,
            headers,
            timeout_s=None if timeout_s is None else timeout_s + 5.0,
        )
        raise_for_error(status, body)
        return InferResult(
            request_id=request_id,
            sealed_output=body,
            timings=hd.parse_server_timing(reply_headers.get(hd.SERVER_TIMING_HEADER, "")),
        )

    def _json(
        self,
        method: str,
        path: str,
        doc: Mapping[str, Any] | None = None,
        *,
        control: bool = False,
    ) -> Any:
        body = None if doc is None else json.dumps(doc).encode("utf-8")
        headers = {} if doc is None else {"content-type": "application/json"}
        if control:
            headers.update(self._control)
        status, _, data = self._request(method, path, body, headers)
        raise_for_error(status, data)
        return json.loads(data)

    def load(
        self, *, model_id: str, user_id: str, timeout_s: float | None = None
    ) -> dict[str, float]:
        """Make the model resident (with the keys of ``user_id``); its stage timings."""
        doc: dict[str, Any] = {"model_id": model_id, "user_id": user_id}
        if timeout_s is not None:
            doc["timeout_ms"] = int(timeout_s * 1000)
        timings = self._json("POST", "/v1/load", doc, control=True).get("timings", {})
        return {str(k): float(v) for k, v in timings.items()}

    def evict(self, model_id: str) -> bool:
        answer = self._json("POST", "/v1/evict", {"model_id": model_id}, control=True)
        return bool(answer.get("evicted"))

    def stats(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._json("GET", "/v1/stats")
        return doc

    def healthy(self) -> bool:
        """Whether the instance answers ``/healthz`` with 200 (its runtime is ready)."""
        try:
            status, _, _ = self._request("GET", "/healthz", timeout_s=5.0)
        except InstanceError:
            return False
        return status == 200

    def __repr__(self) -> str:
        return f"InstanceClient({self.url!r}, state={self.state.value})"
