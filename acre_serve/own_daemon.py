"""OwnDaemon: the cache daemon `acre serve` starts for itself when no `--store` is given.

It serves the default data folder ($ACRE_HOME/store) on a unix socket of its own
($ACRE_HOME/run/serve-<pid>.sock, in a folder only the owner can enter, created with umask 077).
It runs in its own session, so a Ctrl-C or SIGTERM meant for `acre serve` does not stop it before the
workers have drained: `acre serve` stops it last. If `acre serve` dies without stopping it, Linux sends
it SIGTERM (parent-death signal).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from acre_model.paths import acre_home
from acre_store.errors import StoreUnavailable

from .config import ConfigError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the daemon may outlive a killed parent
        pass


class OwnDaemon:
    def __init__(self, home: Path | None = None):
        home = home or acre_home()
        self.data = home / "store"
        self.run_dir = home / "run"
        self.socket = self.run_dir / f"serve-{os.getpid()}.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60.0) -> "OwnDaemon":
        for d in (self.data, self.run_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.run_dir, 0o700)
        cmd = [sys.executable, "-m", "acre_store.cli", "store", "serve", "--data", str(self.data),
               "--listen", self.addr]
        self.proc = subprocess.Popen(cmd, stdout=sys.stderr, umask=0o077, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        from acre_store.client import StoreClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"the store daemon for {self.data} exited with status {self.proc.returncode} "
                                  f"(is another process using that folder? give --store ADDR to share its daemon)")
            try:
                StoreClient(self.addr, connect_timeout=0.5).close()
                return
            except StoreUnavailable:
                time.sleep(0.1)
        self.stop()
        raise ConfigError(f"the store daemon for {self.data} did not start within {timeout:g}s")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout)


def terminate(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
