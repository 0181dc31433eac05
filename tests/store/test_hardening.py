"""Hardening (issue 13, item 6): what a careless or hostile client cannot do to the daemon and its other clients."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from .support import REAL, ROOT, assert_doc_equal, make_doc


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


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_owner_only_files_whatever_the_umask(daemon_factory, backend, umask):
    old = os.umask(umask)
    try:
        d = daemon_factory(backend)
    finally:
        os.umask(old)
    doc = make_doc(REAL)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(c, doc)  # chunks now in shared files
        shm = c.stats().shared["dir"]
    paths = [d.data, shm, d.addr[len("unix://"):], d.addr[len("unix://"):] + ".data"]
    for top in (d.data, shm):
        for dirpath, dirnames, filenames in os.walk(top):
            paths += [os.path.join(dirpath, n) for n in dirnames + filenames]
    assert len(paths) > 8
    loose = {p: oct(os.lstat(p).st_mode & 0o777) for p in paths if os.lstat(p).st_mode & 0o077}
    assert not loose, loose
