"""The browser client's static files, served under ``/web/`` when ``gateway.web`` is on.

Four files from the package (``sealserve/gateway/web/``): ``index.html``, ``app.js`` (the
page), ``sealserve.js`` (the client module, docs/protocol.md) and ``style.css``.  They are read
once, when the gateway is built, and served from memory with a strict Content-Security-Policy
(scripts only from the gateway itself, no inline script but the import map, fetches only to
the gateway).  The page pins its two scripts with Subresource Integrity hashes (the import
map's ``integrity`` covers ``sealserve.js`` as a module import), so a file changed on the way
or in a cache is refused; that cannot protect a user from the gateway that serves the page
itself (docs/threat-model.md, "The browser client").  :func:`web_integrity` gives the hashes
to pin when the module is loaded from elsewhere.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from typing import Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

__all__ = ["WEB_PREFIX", "WebAssets", "web_integrity"]

#: Where the page lives on the gateway.
WEB_PREFIX: Final = "/web"
_TYPES: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "sealserve.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_INDEX_TYPE: Final = "text/html; charset=utf-8"
_IMPORT_MAP: Final = "<!--import-map-->"
_APP_INTEGRITY: Final = "__APP_INTEGRITY__"


def _read(name: str) -> bytes:
    return resources.files("sealserve.gateway").joinpath("web", name).read_bytes()


def _sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode("ascii")


def web_integrity() -> dict[str, str]:
    """The Subresource Integrity hash (``sha384-...``) of each script of this installation."""
    return {name: _sri(_read(name)) for name in sorted(_TYPES) if name.endswith(".js")}


@dataclasses.dataclass(frozen=True)
class WebAssets:
    """The page's files in memory, with the headers they are served with."""

    files: Mapping[str, tuple[bytes, str]]
    headers: Mapping[str, str]

    @classmethod
    def load(cls) -> WebAssets:
        files = {name: (_read(name), kind) for name, kind in _TYPES.items()}
        integrity = {name: _sri(data) for name, (data, _) in files.items()}
        import_map = json.dumps(
            {"imports": {}, "integrity": {"./sealserve.js": integrity["sealserve.js"]}},
            separators=(",", ":"),
        )
        page = _read("index.html").decode("utf-8")
        if _IMPORT_MAP not in page or _APP_INTEGRITY not in page:
            raise RuntimeError("the packaged index.html lacks its integrity placeholders")
        page = page.replace(_IMPORT_MAP, f'<script type="importmap">{import_map}</script>')
        page = page.replace(_APP_INTEGRITY, integrity["app.js"])
        map_hash = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
        csp = "; ".join(
            [
                "default-src 'none'",
                f"script-src 'self' 'sha256-{map_hash}'",
                "connect-src 'self'",
                "img-src 'self' blob: data:",
                "style-src 'self'",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            ]
        )
        headers = {
            "content-security-policy": csp,
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "cross-origin-opener-policy": "same-origin",
            "cache-control": "no-cache",
        }
        files["index.html"] = (page.encode("utf-8"), _INDEX_TYPE)
        return cls(files=files, headers=headers)

    def routes(self) -> list[Route]:
        """``GET /web`` (a redirect), ``GET /web/`` (the page) and ``GET /web/<file>``."""

        async def redirect(request: Request) -> Response:
            return RedirectResponse(f"{WEB_PREFIX}/", status_code=308)

        async def serve(request: Request) -> Response:
            name = request.path_params.get("name") or "index.html"
            found = self.files.get(name)
            if found is None:
                return Response(b"not found\n", status_code=404, media_type="text/plain")
            data, kind = found
            return Response(data, media_type=kind, headers=dict(self.headers))

        return [
            Route(WEB_PREFIX, redirect, methods=["GET"]),
            Route(f"{WEB_PREFIX}/", serve, methods=["GET"]),
            Route(WEB_PREFIX + "/{name:str}", serve, methods=["GET"]),
        ]
