"""TLS, mutual TLS and bearer tokens on real daemon processes, over TCP and the unix socket (auth.py);
a plain TCP listener only with --insecure; owner-only modes of the sockets and shared-memory files."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from acre_store import StoreUnavailable, Unauthenticated
from acre_store.client import StoreClient

from tests.helpers import free_port

from .support import ROOT, TINY, assert_doc_equal, make_doc


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 signed by it, and a client certificate signed by it."""
    d = tmp_path_factory.mktemp("pki")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=acre-test-ca", cwd=d)
    for who, cn in (("server", "127.0.0.1"), ("client", "acre-test-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "1", *(["-extfile", "san.cnf"] if who == "server" else []), cwd=d)
    return {k: str(d / f) for k, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"),
                                       ("client_cert", "client.pem"), ("client_key", "client.key"))}


@pytest.fixture
def token_file(tmp_path):
    p = tmp_path / "token"
    p.write_text("s3cret-token-for-tests\n")
    os.chmod(p, 0o600)
    return str(p)


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch):
    monkeypatch.delenv("ACRE_STORE_TOKEN", raising=False)
    monkeypatch.delenv("ACRE_STORE_TLS_CA", raising=False)


def test_tls_needs_the_ca(daemon_factory, pki):
    tcp = f"127.0.0.1:{free_port()}"
    d = daemon_factory("lmdb", "--listen", tcp, "--tls-cert", pki["cert"], "--tls-key", pki["key"])
    with pytest.raises(StoreUnavailable, match="TLS"):
        StoreClient(tcp, connect_timeout=1.0)
    doc = make_doc(TINY)
    with StoreClient(tcp, tls_ca=pki["ca"]) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(c, doc)
    with d.client() as c:  # the unix socket stays plain (owner-only)
        assert c.info(doc.doc_id).doc_id == doc.doc_id


def test_tls_ca_from_the_environment(daemon_factory, pki, monkeypatch):
    tcp = f"127.0.0.1:{free_port()}"
    daemon_factory("lmdb", "--listen", tcp, "--tls-cert", pki["cert"], "--tls-key", pki["key"])
    monkeypatch.setenv("ACRE_STORE_TLS_CA", pki["ca"])
    with StoreClient(tcp) as c:
        assert c.list() == []


def test_mutual_tls_refuses_a_client_without_a_certificate(daemon_factory, pki):
    tcp = f"127.0.0.1:{free_port()}"
    daemon_factory("lmdb", "--listen", tcp, "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                   "--tls-client-ca", pki["ca"])
    with pytest.raises(StoreUnavailable):
        StoreClient(tcp, tls_ca=pki["ca"], connect_timeout=1.0)
    with StoreClient(tcp, tls_ca=pki["ca"], tls_cert=pki["client_cert"], tls_key=pki["client_key"]) as c:
        assert c.list() == []


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_token_wrong_missing_right(daemon_factory, token_file, where):
    tcp = f"127.0.0.1:{free_port()}"
    d = daemon_factory("lmdb", "--listen", tcp, "--token-file", token_file)
    addr = tcp if where == "tcp" else d.addr
    doc = make_doc(TINY)
    with StoreClient(addr, token="s3cret-token-for-tests") as good:
        good.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(good, doc)
        assert good.health() == "SERVING"
    for token in ("wrong", None):
        with StoreClient(addr, token=token, retries=0) as bad:
            with pytest.raises(Unauthenticated):
                bad.info(doc.doc_id)
            with pytest.raises(Unauthenticated):
                bad.list()
            got = []
            with pytest.raises(Unauthenticated):  # over the data socket on unix: the same refusal
                for c, arr in bad.fetch(doc.doc_id, [0, 1]):
                    got.append(arr)
            assert got == []
            with pytest.raises(Unauthenticated):
                bad.get_l1(doc.doc_id)
            with pytest.raises(Unauthenticated):
                bad.delete(doc.doc_id)
            assert bad.health() == "SERVING"  # probes need no secret
    with StoreClient(addr, token="s3cret-token-for-tests") as good:
        assert good.info(doc.doc_id).doc_id == doc.doc_id  # nothing was deleted
        if where == "unix":
            assert good.stats().data_plane["calls"] >= 1  # the data socket served the token holder


def test_token_from_the_environment(daemon_factory, token_file, monkeypatch):
    d = daemon_factory("lmdb", "--token-file", token_file)
    monkeypatch.setenv("ACRE_STORE_TOKEN", "s3cret-token-for-tests")
    with d.client() as c:
        assert c.list() == []


def test_plain_tcp_needs_insecure(daemon_factory, tmp_path):
    tcp = f"127.0.0.1:{free_port()}"
    r = subprocess.run([sys.executable, "-m", "acre_store.cli", "store", "serve", "--data", str(tmp_path / "d"),
                        "--listen", tcp], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--insecure" in lines[0] and tcp in lines[0], r.stderr
    d = daemon_factory("lmdb", "--listen", tcp, "--insecure")
    with StoreClient(tcp) as c:
        assert c.list() == []
    assert "INSECURE" in d.log()


def test_sockets_and_shared_files_are_owner_only(daemon_factory):
    d = daemon_factory("lmdb")
    doc = make_doc(TINY)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, [0]))
        shared_dir = c.stats().shared["dir"]
    sock = d.addr[len("unix://"):]
    for path in (sock, sock + ".data"):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o022 == 0, path  # nobody else may connect
    assert stat.S_IMODE(os.stat(shared_dir).st_mode) == 0o700
    files = os.listdir(shared_dir)
    assert files
    for name in files:
        assert stat.S_IMODE(os.stat(os.path.join(shared_dir, name)).st_mode) == 0o600


def test_cli_flags_reach_a_protected_daemon(daemon_factory, pki, token_file):
    tcp = f"127.0.0.1:{free_port()}"
    daemon_factory("lmdb", "--listen", tcp, "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                   "--token-file", token_file)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "acre_store.cli", "store", *args, "--store", tcp],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    r = cli("ls", "--json", "--tls-ca", pki["ca"], "--token-file", token_file)
    assert r.returncode == 0 and '"documents": []' in r.stdout, r.stderr
    r = cli("ls", "--tls-ca", pki["ca"])
    assert r.returncode == 1 and "token" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = cli("health", "--tls-ca", pki["ca"])  # probes need no token
    assert r.returncode == 0 and r.stdout.strip() == f"{tcp}: SERVING", (r.stdout, r.stderr)
