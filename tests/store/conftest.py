"""Fixtures of the store tests: backends, real daemon processes, a local S3 server and its buckets (all cleaned up)."""
from __future__ import annotations

import shutil

import pytest

from .s3_server import S3Server
from .support import Daemon, short_tmp


@pytest.fixture(params=["lmdb", "zarr"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def daemon_factory(tmp_path):
    """Start daemons (`factory(backend, *extra_flags)`); every one is stopped at the end."""
    started: list[Daemon] = []
    dirs: list[str] = []

    def factory(backend: str = "lmdb", *extra: str, data: str | None = None, start: bool = True) -> Daemon:
        sock_dir = short_tmp()
        dirs.append(sock_dir)
        d = Daemon(data=data or str(tmp_path / f"data-{len(started)}"), backend=backend, sock_dir=sock_dir,
                   extra=list(extra))
        started.append(d)
        return d.start() if start else d

    yield factory
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    for s in dirs:
        shutil.rmtree(s, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory, backend) -> Daemon:
    return daemon_factory(backend)


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server, monkeypatch):
    """A fresh bucket; the AWS variables point every daemon started by this test at the server."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server.new_bucket()


@pytest.fixture
def on_bucket(daemon_factory, bucket):
    """Start a daemon on the test's bucket: `on_bucket(*extra, data=..., backend="lmdb")`."""
    def start(*extra: str, backend: str = "lmdb", **kw):
        return daemon_factory(backend, "--object-store", bucket.url, *extra, **kw)
    return start
