"""Fixtures of the store tests: backends, and real daemon processes that are always cleaned up."""
from __future__ import annotations

import shutil

import pytest

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
