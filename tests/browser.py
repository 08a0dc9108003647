"""A headless Chromium driven over the DevTools protocol through --remote-debugging-pipe (fds 3
and 4: NUL-separated JSON), so the tests need no websocket client and no driver binary.

    with Chromium(path, tmp_path) as browser:
        browser.open("file:///.../report.html")
        browser.evaluate("document.title")
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


def install_chromium() -> tuple[str | None, str]:
    """Find Chromium, else install the Debian package where that is possible (root, apt-get).
    Returns (path or None, why not)."""
    if path := find_chromium():
        return path, ""
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return None, "chromium is not installed and installing it needs root (apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if cmd[1] == "install" and done.returncode == 0 and (path := find_chromium()):
            return path, ""
    return None, f"apt-get install chromium failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"


class Chromium:
    """One headless browser with one page; collects console errors and exceptions."""

    def __init__(self, binary: str, tmp: Path, width: int = 1280, height: int = 900):
        self.binary, self.tmp, self.size = binary, Path(tmp), (width, height)
        self.errors: list[str] = []
        self._next = 0
        self._replies: dict[int, dict] = {}
        self._events: list[dict] = []
        self._cv = threading.Condition()

    def __enter__(self) -> "Chromium":
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's fd 3 reads our commands, its fd 4 writes replies and events (dup2 makes
        # inheritable copies; close_fds=False keeps them, as pass_fds would close fds made after fork)
        def setup():
            # copies above 10 first: a pipe end may already be fd 3 or 4, and dup2 onto itself
            # would neither move the other end nor clear close-on-exec
            high_r, high_w = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        profile = self.tmp / "chromium-profile"
        self.proc = subprocess.Popen(
            [self.binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            preexec_fn=setup, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "chromium.log", "wb"))
        os.close(to_browser_r)
        os.close(from_browser_w)
        threading.Thread(target=self._reader, daemon=True).start()
        target = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in target if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 (it may be gone already)
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)

    # -- the pipe
    def _reader(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cv:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self._on_event(msg)
                    self._cv.notify_all()
        os.close(self._from_browser)

    def _on_event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        self._events.append(msg)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        with self._cv:
            self._next += 1
            mid = self._next
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cv:
            while mid not in self._replies:
                if not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no reply to {method} in {timeout} s")
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    # -- what tests use
    def open(self, url: str, timeout: float = 30) -> None:
        with self._cv:
            self._events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        with self._cv:
            while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
                if not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{url} did not load in {timeout} s")

    def evaluate(self, expression: str, timeout: float = 30):
        """The JSON value of `expression` (awaited when it is a promise); page errors raise."""
        r = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                      awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:60]}...: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])
