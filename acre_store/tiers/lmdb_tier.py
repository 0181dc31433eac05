"""LMDB disk tier: one environment, one key space.

    m/<doc_id>              committed DocRecord (JSON); its `token` names the payload keys
    q/<doc_id>              a damaged record, set aside at start-up (until deleted or put again)
    s/<token>               staging marker of a put in progress (value: doc_id)
    d/<token>/c/<c:08d>     chunk c, raw little-endian bytes [n_layers, 2, n_kv_heads, len_c, head_dim]
    d/<token>/l/<name>      one L1 part, raw little-endian bytes

Payload is written under a fresh token in batched transactions; the commit transaction writes
`m/<doc_id>` and removes `s/<token>` together, so publishing is atomic. On start-up every token that
still has a staging marker is deleted. The map size starts small and doubles when a write hits
MDB_MAP_FULL (LMDB requires no open transaction in the process while it grows: `_gate` ensures that).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import re
import threading
import uuid
from contextlib import contextmanager
from typing import Callable

import lmdb
import numpy as np

from ..errors import ResourceExhausted
from ..record import DocRecord, TensorSpec
from ..types import DocLayout
from .base import DiskTier, Staging

log = logging.getLogger(__name__)

MADV_WILLNEED = 3


def _libc_madvise():
    """madvise(2) from libc (None where there is none): readahead hints on ranges of LMDB's map."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _libc_madvise()

_BATCH_BYTES = 64 << 20  # staged writes are grouped into transactions of about this size


def _chunk_key(record: DocRecord, c: int) -> bytes:
    return f"d/{record.token}/c/{c:08d}".encode()


class _Gate:
    """Shared/exclusive lock: transactions share it, growing the map takes it alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LmdbStaging(Staging):
    def __init__(self, tier: "LmdbTier", doc_id: str):
        self.tier, self.doc_id = tier, doc_id
        self.token = uuid.uuid4().hex
        self.prefix = f"d/{self.token}/".encode()
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0
        tier.write([(f"s/{self.token}".encode(), doc_id.encode())])

    def _add(self, key: bytes, value: bytes) -> None:
        self._pending.append((key, value))
        self._pending_bytes += len(value)
        if self._pending_bytes >= _BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.tier.write(self._pending)
            self._pending, self._pending_bytes = [], 0

    def write_l1(self, spec: TensorSpec, arr: np.ndarray) -> None:
        self._add(self.prefix + b"l/" + spec.name.encode(), arr.tobytes())

    def write_chunk(self, c: int, chunk: np.ndarray) -> None:
        self._add(self.prefix + b"c/%08d" % c, chunk.tobytes())

    def commit(self, record: DocRecord) -> None:
        record.token = self.token
        self._pending.append((b"m/" + self.doc_id.encode(), record.to_json()))
        self.tier.write(self._pending, delete=[f"s/{self.token}".encode()])
        self._pending = []

    def abort(self) -> None:
        self._pending = []
        self.tier.drop_token(self.token)


class LmdbTier(DiskTier):
    name = "lmdb"

    def __init__(self, root: str, map_size: int = 256 << 20, max_map_size: int = 1 << 44):
        os.makedirs(root, exist_ok=True)
        self.max_map_size = max_map_size
        # NOTE: sync stays on: a commit is durable when it returns. Payload is batched into few
        # transactions so the fsync per transaction costs little.
        self.env = lmdb.open(root, map_size=map_size, subdir=True, max_dbs=0, readahead=False,
                             max_readers=1024)
        self._gate = _Gate()
        self._wlock = threading.Lock()
        self.quarantined: dict[str, str] = {}

    # -- transactions --------------------------------------------------------------------------

    def write(self, puts: list[tuple[bytes, bytes]], delete: list[bytes] = (), delete_prefixes: list[bytes] = ()) -> None:
        """One write transaction; grows the map and retries on MDB_MAP_FULL."""
        with self._wlock:
            while True:
                try:
                    with self._gate.shared(), self.env.begin(write=True) as txn:
                        for k, v in puts:
                            txn.put(k, v)
                        for k in delete:
                            txn.delete(k)
                        for p in delete_prefixes:
                            cur = txn.cursor()
                            if cur.set_range(p):
                                while cur.key().startswith(p):
                                    if not cur.delete():
                                        break
                    return
                except lmdb.MapFullError:
                    self._grow()

    def _grow(self) -> None:
        size = self.env.info()["map_size"] * 2
        if size > self.max_map_size:
            raise ResourceExhausted(f"LMDB map would exceed {self.max_map_size} bytes")
        with self._gate.exclusive():
            self.env.set_mapsize(size)

    def _get(self, key: bytes) -> bytes | None:
        with self._gate.shared(), self.env.begin(buffers=False) as txn:
            return txn.get(key)

    def drop_token(self, token: str) -> None:
        self.write([], delete=[f"s/{token}".encode()], delete_prefixes=[f"d/{token}/".encode()])

    # -- DiskTier ------------------------------------------------------------------------------

    def recover(self) -> int:
        with self._gate.shared(), self.env.begin() as txn:
            tokens = [bytes(k)[2:].decode() for k, _ in txn.cursor() if bytes(k).startswith(b"s/")]
        for t in tokens:
            self.drop_token(t)
        return len(tokens)

    def records(self) -> list[DocRecord]:
        with self._gate.shared(), self.env.begin(buffers=False) as txn:
            cur = txn.cursor()
            out, bad = [], []
            if cur.set_range(b"m/"):
                for k, v in cur:
                    if not k.startswith(b"m/"):
                        break
                    try:
                        out.append(DocRecord.from_json(v))
                    except Exception as e:  # noqa: BLE001 - any damage sets this one document aside
                        bad.append((k, v, f"{type(e).__name__}: {e}"))
            if cur.set_range(b"q/"):
                for k, _ in cur:
                    if not k.startswith(b"q/"):
                        break
                    self.quarantined[k[2:].decode(errors="replace")] = "damaged record (found by an earlier start)"
        for k, v, why in bad:
            doc_id = k[2:].decode(errors="replace")
            self.write([(b"q/" + k[2:], v)], delete=[k])
            self.quarantined[doc_id] = why
            log.error("document %s set aside as damaged (%s); delete it or put it again", doc_id, why)
        return out

    def drop_quarantined(self, doc_id: str) -> bool:
        if self.quarantined.pop(doc_id, None) is None:
            return False
        raw = self._get(b"q/" + doc_id.encode()) or b""
        token = re.search(rb'"token":\s*"([0-9a-f]+)"', raw)  # its payload, if the record still names it
        self.write([], delete=[b"q/" + doc_id.encode()],
                   delete_prefixes=[b"d/" + token.group(1) + b"/"] if token else [])
        return True

    def stage(self, doc_id: str, layout: DocLayout, l1: list[TensorSpec]) -> Staging:
        return LmdbStaging(self, doc_id)

    def read_into(self, record: DocRecord, c: int, out: memoryview, on_layer: Callable[[int], None]) -> None:
        # buffers=True: the value is a view of LMDB's map, stable inside the read transaction: each layer is
        # copied straight out of the map (no intermediate copy).
        with self._gate.shared(), self.env.begin(buffers=True) as txn:
            data = txn.get(_chunk_key(record, c))
            if data is None:
                raise FileNotFoundError(f"chunk {c} of {record.doc_id} is missing")
            src = memoryview(data)
            if len(src) != len(out):
                raise ValueError(f"chunk holds {len(src)} bytes, expected {len(out)}")
            n_layers = record.meta.layout.n_layers
            step = len(out) // n_layers
            for i in range(n_layers):
                out[i * step:(i + 1) * step] = src[i * step:(i + 1) * step]
                on_layer(i)

    def will_need(self, record: DocRecord, chunk_ids: list[int]) -> None:
        if _madvise is None:
            return
        with self._gate.shared(), self.env.begin(buffers=True) as txn:
            for c in chunk_ids:
                data = txn.get(_chunk_key(record, c))
                if data is not None and len(data):
                    addr = np.frombuffer(data, np.uint8).ctypes.data
                    start = addr - addr % mmap.PAGESIZE
                    _madvise(start, len(data) + addr - start, MADV_WILLNEED)

    def read_l1(self, record: DocRecord, spec: TensorSpec) -> np.ndarray:
        data = self._get(f"d/{record.token}/l/{spec.name}".encode())
        if data is None:
            raise FileNotFoundError(f"L1 part {spec.name} of {record.doc_id} is missing")
        return np.frombuffer(data, spec.np_dtype).reshape(spec.shape)

    def update_record(self, record: DocRecord) -> None:
        self.write([(b"m/" + record.doc_id.encode(), record.to_json())])

    def delete(self, record: DocRecord) -> None:
        self.write([], delete=[b"m/" + record.doc_id.encode()], delete_prefixes=[f"d/{record.token}/".encode()])

    def close(self) -> None:
        self.env.close()
