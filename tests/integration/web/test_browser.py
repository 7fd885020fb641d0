"""The gateway's page in headless Chromium, end to end: a user provisioned with the Python SDK
loads their web credentials, picks a photograph, and the sealed MobileNetV2 classifies it.

Checks that the answer is plain onnxruntime's on the very tensor the page sent, that what
crossed the wire opens under the user's key with the Python implementation (so Chromium's
WebCrypto and Python agree), that the page shows the sealed sizes and header bytes, and that
credentials with another key get the gateway's fixed refusal.  Debian's chromium and
chromium-driver are driven by selenium (scripts/ci-deps installs them); nothing is
downloaded.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from sealserve.client import web_credentials
from sealserve.config import GatewaySettings, Settings
from sealserve.crypto import RequestKey, sealed_size, unseal
from sealserve.models import build, sample_image_path
from sealserve.platform import PlatformConfig
from sealserve.protocol import decode_tensors, input_context, unseal_output
from tests.integration.e2e.conftest import Stack, close_stack, open_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

#: What the page did last, as base64 (its byte arrays would not cross WebDriver whole).
READ_LAST = """
const last = window.sealserveDemo.last;
if (!last) return null;
const b64 = (bytes) => {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
};
return {modelId: last.modelId, requestId: last.requestId, top: last.top,
        inputPlaintext: b64(last.inputPlaintext), outputPlaintext: b64(last.outputPlaintext),
        sealedInput: b64(last.sealedInput), sealedOutput: b64(last.sealedOutput)};
"""


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("chromium and chromium-driver are not installed (scripts/ci-deps)")
    return browser, driver


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = PlatformConfig(max_instances=1, instance_concurrency=2, keep_alive_s=120.0)
    settings = Settings(gateway=GatewaySettings(web=True))
    stack = open_stack(tmp_path_factory.mktemp("web"), config, settings=settings)
    try:
        yield stack
    finally:
        close_stack(stack)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    binary, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    options = Options()
    options.binary_location = binary
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def classify(driver: Any, url: str, credentials: Path, image: Path) -> str:
    """Load the page, the credentials and the image, press the button; the final state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return window.sealserveDemo !== undefined")
    )
    driver.find_element(By.ID, "credentials").send_keys(str(credentials))
    driver.find_element(By.ID, "image").send_keys(str(image))
    button = driver.find_element(By.ID, "classify")
    WebDriverWait(driver, 30).until(lambda d: button.is_enabled())
    button.click()
    WebDriverWait(driver, 300).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error")
    )
    state: str = driver.find_element(By.ID, "status").get_attribute("data-state")
    return state


def test_a_browser_classifies_a_photograph_and_only_ciphertext_crosses_the_wire(
    web_stack: Stack, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    onnx_path = build("mobilenet-v2", tmp_path)
    user = web_stack.new_user()
    model_id = web_stack.add_model("mobilenet-v2", onnx_path.read_bytes(), tmp_path, grant=[user])
    key = web_stack.key(user, model_id)
    credentials = tmp_path / "web-credentials.json"
    credentials.write_bytes(
        web_credentials(user_id=user.principal_id, model_id=model_id, request_key=key)
    )
    os.chmod(credentials, 0o600)
    url = web_stack.deployment.info.web_url
    assert url == f"{web_stack.gateway_url}/web/"

    state = classify(browser, url, credentials, sample_image_path())
    status = browser.find_element(By.ID, "status").text
    assert state == "done", status
    last = browser.execute_script(READ_LAST)
    assert last["modelId"] == model_id
    raw = {k: base64.b64decode(last[k]) for k in
           ("inputPlaintext", "outputPlaintext", "sealedInput", "sealedOutput")}  # fmt: skip

    # the answer is plain onnxruntime's on the tensor the page sent
    inputs = decode_tensors(raw["inputPlaintext"])
    assert list(inputs) == ["input"]
    assert inputs["input"].shape == (1, 3, 224, 224)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (plain,) = session.run(["logits"], {"input": inputs["input"]})
    outputs = decode_tensors(raw["outputPlaintext"])
    np.testing.assert_allclose(outputs["logits"], plain, rtol=1e-4, atol=1e-4)
    assert last["top"][0]["index"] == int(np.argmax(plain))
    shown = browser.find_element(By.CSS_SELECTOR, "#scores tbody tr").get_attribute("data-index")
    assert shown == str(int(np.argmax(plain)))

    # what crossed the wire opens under the user's key in Python, and only there
    ids = {"model_id": model_id, "user_id": user.principal_id, "request_id": last["requestId"]}
    assert (
        unseal(key.input_key, raw["sealedInput"], context=input_context(**ids))
        == (raw["inputPlaintext"])
    )
    opened = unseal_output(key, raw["sealedOutput"], **ids)
    assert opened["logits"].tobytes() == outputs["logits"].tobytes()
    assert len(raw["sealedInput"]) == sealed_size(len(raw["inputPlaintext"]))
    assert raw["inputPlaintext"][:64] not in raw["sealedInput"]
    assert raw["sealedInput"][:2] == b"\x01\x01"

    # and the page says so
    size = f"{len(raw['sealedInput']):,} bytes"
    assert browser.find_element(By.ID, "bytes-in").text == size
    assert browser.find_element(By.ID, "bytes-out").text == f"{len(raw['sealedOutput']):,} bytes"
    assert browser.find_element(By.ID, "head-in").text.startswith("01 01 ")
    browser.save_screenshot(str(tmp_path / "page.png"))

    # credentials with another request key: the runtime cannot open the input
    other = tmp_path / "other.json"
    other.write_bytes(
        web_credentials(
            user_id=user.principal_id, model_id=model_id, request_key=RequestKey.generate()
        )
    )
    assert classify(browser, url, other, sample_image_path()) == "error"
    assert "invalid_envelope" in browser.find_element(By.ID, "status").text
