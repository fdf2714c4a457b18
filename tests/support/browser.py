"""A headless Chromium for tests, driven over the DevTools protocol: open a page, fill a form,
read the DOM, take a full-page screenshot. Loopback only; a fresh profile per browser.

`chromium_binary()` finds Debian's `chromium`; when it is missing, `CI=true` and we run as root it
is installed with apt-get, else the test skips with the reason (under CI, fails).
"""

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]  # fmt: skip


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _found() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


def chromium_binary() -> str:
    """Debian's chromium; installed when missing under CI as root, else skip (CI: fail)."""
    binary = _found()
    if binary is None and _in_ci() and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False,
                       capture_output=True)  # fmt: skip
        binary = _found()
    if binary is None:
        reason = "no chromium on PATH (apt-get install -y chromium)"
        if _in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


class Browser:
    """One page of a headless Chromium, over the DevTools websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; only our answer matters
            reply = json.loads(self.socket.recv(timeout=30))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def dom(self) -> str:
        html: str = self.evaluate("document.documentElement.outerHTML")
        return html

    def screenshot(self, path: Path, width: int = 1280) -> None:
        """The whole page, `width` CSS pixels wide, as a PNG."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=800,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        time.sleep(0.5)  # frames outside the old viewport lay out and paint again
        shot = self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not marker.exists() or not marker.read_text().strip():
        assert process.poll() is None, "chromium exited at startup"
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        time.sleep(0.05)
    return int(marker.read_text().split()[0])


def _page_socket_url(port: int) -> str:
    deadline = time.monotonic() + 15
    while True:
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        pages = [target for target in targets if target.get("type") == "page"]
        if pages:
            url: str = pages[0]["webSocketDebuggerUrl"]
            return url
        assert time.monotonic() < deadline, "chromium opened no page"
        time.sleep(0.05)


@contextmanager
def browser(binary: str, profile: Path) -> Iterator[Browser]:
    """A headless Chromium with a new empty profile, stopped on exit."""
    profile.mkdir(parents=True, exist_ok=True)
    args = [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = _page_socket_url(_devtools_port(profile, process))
        with connect(url, max_size=None, open_timeout=15) as socket:
            page = Browser(socket)
            page.send("Page.enable")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
