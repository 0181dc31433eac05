"""Helpers of the store tests: random documents of a real layout, and real daemon processes on a unix socket."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from acre_store import DocLayout, DocMeta, StoreUnavailable
from acre_store.client import StoreClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Small enough for fast tests, shaped like the real thing (SmolLM2-135M: 30 layers x 3 KV heads x 64).
TINY = DocLayout(n_layers=4, n_kv_heads=2, head_dim=8, chunk_size=16, dtype="float32", n_tokens=100)
REAL = DocLayout(n_layers=30, n_kv_heads=3, head_dim=64, chunk_size=64, dtype="float32", n_tokens=64 * 5 + 17)


@dataclass
class Doc:
    meta: DocMeta
    l1: dict
    chunks: list

    @property
    def doc_id(self) -> str:
        return self.meta.doc_id


def make_doc(layout: DocLayout = TINY, seed: int = 0, name: str = "", fingerprint: str = "test-model") -> Doc:
    """A random document; its id is a digest of (fingerprint, layout, seed) like the engine's."""
    rng = np.random.default_rng(seed)
    dt = layout.np_dtype
    chunks = []
    for c in range(layout.n_chunks):
        shape = layout.chunk_shape(c)
        if dt == np.uint16:
            chunks.append(rng.integers(0, 1 << 16, shape, dtype=np.uint16))
        else:
            chunks.append(rng.standard_normal(shape).astype(dt))
    n_l1 = 12
    l1 = {
        "keys": rng.standard_normal((layout.n_layers, layout.n_kv_heads, n_l1, layout.head_dim)).astype(np.float16),
        "positions": np.arange(n_l1, dtype=np.int64),
        "chunk_of": (np.arange(n_l1) % layout.n_chunks).astype(np.int32),
        "index_keys": rng.integers(-128, 127, (2, 4, layout.n_tokens, 8), dtype=np.int8),
        "scalar": np.array(7, dtype=np.int16),
    }
    doc_id = hashlib.sha256(f"{fingerprint}|{layout}|{seed}".encode()).hexdigest()
    meta = DocMeta(doc_id=doc_id, model_fingerprint=fingerprint, layout=layout, name=name or f"doc{seed}",
                   extra={"locator": {"heads": [1, 2]}, "seed": seed})
    return Doc(meta, l1, chunks)


def assert_doc_equal(store, doc: Doc) -> None:
    """Every chunk and L1 part of `doc` comes back byte-exact."""
    got = dict(store.fetch(doc.doc_id, range(doc.meta.layout.n_chunks)))
    assert sorted(got) == list(range(len(doc.chunks)))
    for c, want in enumerate(doc.chunks):
        assert got[c].dtype == want.dtype and got[c].shape == want.shape
        assert got[c].tobytes() == want.tobytes(), f"chunk {c} differs"
    l1 = store.get_l1(doc.doc_id)
    assert sorted(l1) == sorted(doc.l1)
    for k, v in doc.l1.items():
        assert l1[k].dtype == v.dtype and l1[k].shape == v.shape and l1[k].tobytes() == v.tobytes(), k


def short_tmp() -> str:
    """A short directory for unix sockets (paths are limited to ~107 bytes)."""
    return tempfile.mkdtemp(prefix="acre-", dir="/tmp")


@dataclass
class Daemon:
    """A real `acre store serve` process."""

    data: str
    backend: str
    sock_dir: str
    extra: list = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log_path: str = ""

    @property
    def addr(self) -> str:
        return f"unix://{self.sock_dir}/store.sock"

    def start(self, wait: bool = True) -> "Daemon":
        self.log_path = os.path.join(self.sock_dir, f"daemon-{time.monotonic_ns()}.log")
        log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "acre_store.cli", "store", "serve", "--data", self.data, "--listen", self.addr,
               "--backend", self.backend, *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                StoreClient(self.addr, connect_timeout=0.5).close()
                return
            except StoreUnavailable:
                time.sleep(0.05)
        raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def client(self, **kw) -> StoreClient:
        return StoreClient(self.addr, **kw)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def restart(self) -> "Daemon":
        self.stop()
        return self.start()


