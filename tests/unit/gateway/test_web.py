"""The browser client's files on the gateway: off by default, served from memory under
/web/ with a strict Content-Security-Policy and Subresource Integrity that matches the files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from importlib import resources

import httpx

from sealserve.gateway import Gateway, GatewayOptions, web_integrity
from sealserve.gateway._http import HttpServer
from tests.unit.gateway.lean import LeanClientTransport
from tests.unit.gateway.test_app import FakePlatform, Models


def packaged(name: str) -> bytes:
    return resources.files("sealserve.gateway").joinpath("web", name).read_bytes()


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def get_all(web: bool, paths: list[str]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        gateway = Gateway(FakePlatform(), Models(), options=GatewayOptions(web=web))
        transport = LeanClientTransport(HttpServer(app=gateway.app, routes=gateway.lean_routes()))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return [await client.get(p) for p in paths]

    return asyncio.run(run())


def test_the_page_is_off_by_default() -> None:
    for response in get_all(False, ["/web/", "/web/sealserve.js"]):
        assert response.status_code == 404


def test_the_page_and_its_files_are_served_with_their_types_and_headers() -> None:
    page, module, app, css, missing, bare = get_all(
        True,
        ["/web/", "/web/sealserve.js", "/web/app.js", "/web/style.css", "/web/x.js", "/web"],
    )
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert module.content == packaged("sealserve.js")
    assert module.headers["content-type"].startswith("text/javascript")
    assert app.content == packaged("app.js")
    assert css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert bare.status_code == 308
    assert bare.headers["location"] == "/web/"
    for response in (page, module, app, css):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in response.headers["content-security-policy"]


def test_the_page_pins_both_scripts_and_its_csp_admits_only_its_import_map() -> None:
    (page,) = get_all(True, ["/web/"])
    html = page.text
    assert "__APP_INTEGRITY__" not in html
    assert "<!--import-map-->" not in html
    assert f'src="app.js" integrity="{sri(packaged("app.js"))}"' in html
    found = re.search(r'<script type="importmap">(.*?)</script>', html)
    assert found is not None
    import_map = found.group(1)
    assert sri(packaged("sealserve.js")) in import_map
    digest = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
    csp = page.headers["content-security-policy"]
    assert f"script-src 'self' 'sha256-{digest}'" in csp
    assert "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_web_integrity_names_the_packaged_scripts() -> None:
    assert web_integrity() == {
        "app.js": sri(packaged("app.js")),
        "sealserve.js": sri(packaged("sealserve.js")),
    }
