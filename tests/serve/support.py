"""Helpers of the serving tests: a real `acre serve` process on a free port, and its HTTP client."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from acre_serve.own_daemon import terminate
from tests.helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




@dataclass
class Server:
    """`acre serve` as a subprocess (its output in `log_path`); `start()` waits for /health."""

    args: list
    log_path: str
    api_key: str | None = None
    env: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    scheme: str = "http"
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def command(self) -> list:
        key = ["--api-key", self.api_key] if self.api_key else []
        return [sys.executable, "-m", "acre_model.cli", "serve", "--port", str(self.port), *key, *self.args]

    def start(self, timeout: float = 180.0) -> "Server":
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"acre serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2, verify=False).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"acre serve not ready after {timeout}s:\n{self.log()}")

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, verify=False)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 60.0) -> int:
        return terminate(self.proc, timeout) if self.proc else 0

    def __enter__(self) -> "Server":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def sse_events(lines) -> list:
    """The JSON payloads of a server-sent event stream (lines of text), up to `data: [DONE]`."""
    import json

    out = []
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            out.append("[DONE]")
            break
        out.append(json.loads(data))
    return out
