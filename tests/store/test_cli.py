"""`acre store serve|ls|stats|rm`: output, --json, and one-line errors without tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from acre_store import EmbeddedStore
from acre_store.cli import parse_bytes

from .support import ROOT, TINY, make_doc, short_tmp


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "acre_store.cli", "store", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)


def test_commands_against_a_daemon(daemon_factory):
    d = daemon_factory("zarr")
    doc = make_doc(TINY, name="report.txt")
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, [0, 0]))
    r = run("ls", "--store", d.addr, "--json")
    assert r.returncode == 0, r.stderr
    docs = json.loads(r.stdout.strip().splitlines()[-1])["documents"]
    assert [x["doc_id"] for x in docs] == [doc.doc_id] and docs[0]["name"] == "report.txt"
    r = run("ls", "--store", d.addr)
    assert doc.doc_id[:20] in r.stdout and "report.txt" in r.stdout
    r = run("stats", "--store", d.addr, "--json")
    st = json.loads(r.stdout)
    assert st["backend"] == "zarr" and st["n_docs"] == 1 and st["ram"]["hits"] == 1
    r = run("stats", "--store", d.addr)
    assert "hit rate 50.0%" in r.stdout, r.stdout
    r = run("rm", doc.doc_id[:12], "--store", d.addr, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"deleted": doc.doc_id}
    r = run("rm", doc.doc_id, "--store", d.addr)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "unknown document" in r.stderr
    assert "Traceback" not in r.stderr


def test_embedded_default_under_acre_home(tmp_path):
    env = {**os.environ, "ACRE_HOME": str(tmp_path / "home")}
    doc = make_doc(TINY)
    with EmbeddedStore(str(tmp_path / "home" / "store")) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
    r = run("ls", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [x["doc_id"] for x in json.loads(r.stdout)["documents"]] == [doc.doc_id]
    r = run("rm", "doc0", env=env)  # by name
    assert r.returncode == 0 and doc.doc_id in r.stdout
    assert "no documents" in run("ls", env=env).stdout


def test_errors_are_one_line():
    r = run("ls", "--store", f"unix://{short_tmp()}/none.sock")
    assert r.returncode == 1 and "none.sock" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    r = run("serve", "--data", "/proc/acre-cannot-create")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("text,value", [("1024", 1024), ("512M", 512 << 20), ("2GiB", 2 << 30), ("1.5k", 1536)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value
