"""Helpers shared by tests: run the `acre` CLI as a real subprocess."""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def run_acre(*args: str, env_extra: dict | None = None, input: str | None = None, timeout: float = 300):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "acre_model.cli", *args], capture_output=True, text=True,
                          env=env, input=input, timeout=timeout)


def assert_clean_error(proc, needle: str) -> None:
    """Non-zero exit, one clear line on stderr containing `needle`, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle.lower() in lines[0].lower(), lines[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
