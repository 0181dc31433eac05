"""Hardening (issue 13, item 6): what a careless or hostile client cannot do to the daemon and its other clients."""
from __future__ import annotations

import socket
import subprocess
import sys

from .support import ROOT, make_doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_daemon_per_tcp_port(daemon_factory, tmp_path):
    port = free_port()
    first = daemon_factory("lmdb", "--listen", f"127.0.0.1:{port}")
    second = subprocess.run(
        [sys.executable, "-m", "acre_store.cli", "store", "serve", "--data", str(tmp_path / "other"),
         "--listen", f"127.0.0.1:{port}"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("acre store: error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}: the address is in use" in errors[0], second.stderr
    with first.client() as c:  # the first one still serves
        doc = make_doc()
        c.put(doc.meta, doc.l1, doc.chunks)
