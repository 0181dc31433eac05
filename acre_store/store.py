"""The store itself: tiers, integrity, capacity, counters. A plain object, no socket.

`Store` owns one data directory (an exclusive flock keeps any second process out) holding one disk
tier (Zarr v3 or LMDB). Reads go RAM tier first, then disk (checksum-verified, then promoted to RAM).
Puts are staged, verified and committed atomically; the disk cap evicts whole least-recently-used
documents (pinned ones are exempt). The gRPC servicer and `EmbeddedStore` are thin layers over it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from .checksum import crc32c, layer_crcs
from .errors import (DataLoss, DocumentNotFound, InvalidArgument, LayoutMismatch, ResourceExhausted,
                     StoreError, StoreUnavailable)
from .record import DocRecord, TensorSpec
from .stats import DiskTierStats, OpStats, RamTierStats, StoreStats
from .tiers.base import DiskTier, Staging
from .tiers.ram_tier import RamTier
from .types import FORMAT_VERSION, DocMeta, check_doc_id

log = logging.getLogger(__name__)

BACKENDS = ("lmdb", "zarr")
DEFAULT_RAM_BYTES = 1 << 30
CONFIG_FILE = "acre-store.json"
LOCK_FILE = "LOCK"


@dataclass
class StoreConfig:
    """Where and how a store keeps its data. `disk_bytes=0` means no disk cap."""

    path: str
    backend: str | None = None  # None: whatever the directory already holds, else "lmdb"
    ram_bytes: int = DEFAULT_RAM_BYTES
    disk_bytes: int = 0
    lmdb_map_size: int = 256 << 20  # initial; grows as needed

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise InvalidArgument(f"unknown backend {self.backend!r}: expected one of {BACKENDS}")
        if self.ram_bytes < 0 or self.disk_bytes < 0:
            raise InvalidArgument("ram_bytes and disk_bytes must be >= 0")


@dataclass
class _Counters:
    disk_reads: int = 0
    disk_evictions: int = 0
    checksum_failures: int = 0
    puts: int = 0
    put_noops: int = 0
    put_aborts: int = 0
    fetched_chunks: int = 0
    fetched_bytes: int = 0
    deletes: int = 0


class PutSession:
    """One document being written: parts arrive (L1 in any order, chunks in order), then `commit`."""

    def __init__(self, store: "Store", meta: DocMeta, l1: list[TensorSpec], staging: Staging, nbytes: int):
        self.store, self.meta, self.staging, self.nbytes = store, meta, staging, nbytes
        self.layout = meta.layout
        self._specs = {s.name: s for s in l1}
        self._l1_crc: dict[str, int] = {}
        self._chunk_crcs: list[list[int]] = []
        self._closed = False

    @property
    def next_chunk(self) -> int:
        return len(self._chunk_crcs)

    def add_l1(self, name: str, arr: np.ndarray, crc: int | None = None) -> None:
        spec = self._specs.get(name)
        if spec is None:
            raise InvalidArgument(f"L1 part {name!r} is not declared in the header")
        if name in self._l1_crc:
            raise InvalidArgument(f"L1 part {name!r} sent twice")
        if arr.dtype != spec.np_dtype or arr.shape != spec.shape:
            raise InvalidArgument(f"L1 part {name!r}: got {arr.dtype}{list(arr.shape)}, declared {spec.dtype}{list(spec.shape)}")
        arr = np.require(arr, requirements="C")  # keeps 0-d arrays 0-d
        got = crc32c(arr)
        if crc is not None and crc != got:
            raise DataLoss(f"L1 part {name!r} arrived corrupted (checksum mismatch)")
        self.staging.write_l1(spec, arr)
        self._l1_crc[name] = got

    def add_chunk(self, c: int, chunk: np.ndarray, crc: int | None = None) -> None:
        """chunk: [n_layers, 2, n_kv_heads, len_c, head_dim] in the layout dtype (uint16 for bfloat16)."""
        if c != self.next_chunk:
            raise InvalidArgument(f"chunk {c} out of order: expected chunk {self.next_chunk}")
        if c >= self.layout.n_chunks:
            raise InvalidArgument(f"too many chunks: the layout has {self.layout.n_chunks}")
        if not isinstance(chunk, np.ndarray):
            raise InvalidArgument(f"chunk {c} must be a numpy array, got {type(chunk).__name__}")
        want = self.layout.chunk_shape(c)
        if chunk.shape != want or chunk.dtype != self.layout.np_dtype:
            raise InvalidArgument(
                f"chunk {c}: got {chunk.dtype}{list(chunk.shape)}, layout wants {self.layout.np_dtype}{list(want)}")
        chunk = np.ascontiguousarray(chunk)
        if crc is not None and crc != crc32c(chunk):
            raise DataLoss(f"chunk {c} arrived corrupted (checksum mismatch)")
        crcs = layer_crcs(chunk)
        self.staging.write_chunk(c, chunk)
        self._chunk_crcs.append(crcs)

    def commit(self) -> DocMeta:
        """Publish atomically once every declared part arrived; returns the stored meta."""
        missing = sorted(set(self._specs) - set(self._l1_crc))
        if missing:
            raise InvalidArgument(f"incomplete put: L1 parts {missing} missing")
        if self.next_chunk != self.layout.n_chunks:
            raise InvalidArgument(f"incomplete put: {self.next_chunk} of {self.layout.n_chunks} chunks sent")
        meta = replace(self.meta, created=time.time(), nbytes=self.nbytes, pinned=bool(self.meta.pinned))
        record = DocRecord(
            meta=meta,
            l1=[replace(s, crc32c=self._l1_crc[s.name]) for s in self._specs.values()],
            chunk_crcs=self._chunk_crcs)
        self._closed = True
        return self.store._commit(self, record)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self.store._abort(self)


class Store:
    def __init__(self, config: StoreConfig, allocator=None):
        """allocator: where the RAM tier keeps chunk bytes (see tiers/ram_tier.py); default: process heap."""
        self.config = config
        self.path = os.path.abspath(config.path)
        os.makedirs(self.path, exist_ok=True)
        self._lockfile = self._take_lock()
        try:
            self.backend = self._check_backend(config.backend)
            self.disk = self._open_tier()
            self.discarded_at_start = self.disk.recover()
            if self.discarded_at_start:
                log.warning("discarded %d uncommitted put(s) left by a crash", self.discarded_at_start)
        except BaseException:
            self._lockfile.close()
            raise
        # LRU of committed documents, least recently used first (start-up order: creation time).
        self._docs: OrderedDict[str, DocRecord] = OrderedDict(
            (r.doc_id, r) for r in sorted(self.disk.records(), key=lambda r: r.meta.created))
        self._used = sum(r.meta.nbytes for r in self._docs.values())
        self._reserved = 0
        self._lock = threading.Lock()         # _docs, _used, _reserved, counters
        self._commit_lock = threading.Lock()  # serialises publish/delete against each other
        self.counters = _Counters()
        self.ram = RamTier(config.ram_bytes, allocator=allocator)
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="acre-prefetch")
        self._closed = False
        log.info("store %s (%s): %d documents, %d bytes", self.path, self.backend, len(self._docs), self._used)

    # -- opening --------------------------------------------------------------------------------

    def _take_lock(self):
        f = open(os.path.join(self.path, LOCK_FILE), "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "?"
            f.close()
            raise StoreUnavailable(
                f"store data {self.path} is in use by another process (pid {owner}); "
                "share it through one daemon (`acre store serve`) instead") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        return f

    def _check_backend(self, backend: str | None) -> str:
        cfg_path = os.path.join(self.path, CONFIG_FILE)
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
            if cfg.get("format_version") != FORMAT_VERSION:
                raise InvalidArgument(f"store {self.path} has format version {cfg.get('format_version')}, "
                                      f"this code reads {FORMAT_VERSION}")
            if backend is not None and backend != cfg["backend"]:
                raise InvalidArgument(f"store {self.path} uses backend {cfg['backend']!r}, not {backend!r}")
            return cfg["backend"]
        backend = backend or "lmdb"
        tmp = cfg_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"format_version": FORMAT_VERSION, "backend": backend}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cfg_path)
        return backend

    def _open_tier(self) -> DiskTier:
        if self.backend == "zarr":
            from .tiers.zarr_tier import ZarrTier
            return ZarrTier(os.path.join(self.path, "zarr"))
        from .tiers.lmdb_tier import LmdbTier
        return LmdbTier(os.path.join(self.path, "lmdb"), map_size=self.config.lmdb_map_size)

    # -- documents ------------------------------------------------------------------------------

    def record(self, doc_id: str, touch: bool = True) -> DocRecord:
        """The committed document's record; `touch` marks it most recently used (disk LRU)."""
        check_doc_id(doc_id)
        with self._lock:
            rec = self._docs.get(doc_id)
            if rec is None:
                raise DocumentNotFound(f"unknown document {doc_id}")
            if touch:
                self._docs.move_to_end(doc_id)
            return rec

    def info(self, doc_id: str) -> DocMeta:
        return self.record(doc_id).meta

    def list(self) -> list[DocMeta]:
        with self._lock:
            return sorted((r.meta for r in self._docs.values()), key=lambda m: (m.created, m.doc_id))

    def begin_put(self, meta: DocMeta, l1: list[TensorSpec]) -> PutSession | None:
        """A session to write the document, or None if it is already stored (a put is then a no-op)."""
        meta.validate()
        names = [s.name for s in l1]
        if len(set(names)) != len(names):
            raise InvalidArgument("duplicate L1 part names")
        existing = self._existing(meta)
        if existing is not None:
            return None
        nbytes = meta.layout.kv_nbytes + sum(s.nbytes for s in l1)
        self._reserve(nbytes)
        try:
            staging = self.disk.stage(meta.doc_id, meta.layout, l1)
        except BaseException:
            self._unreserve(nbytes)
            raise
        return PutSession(self, meta, l1, staging, nbytes)

    def _existing(self, meta: DocMeta) -> DocMeta | None:
        with self._lock:
            rec = self._docs.get(meta.doc_id)
        if rec is None:
            return None
        old = rec.meta
        if old.layout != meta.layout or old.model_fingerprint != meta.model_fingerprint:
            raise LayoutMismatch(f"document {meta.doc_id} is already stored with another layout or model "
                                 f"(stored {old.layout}, fingerprint {old.model_fingerprint})")
        with self._lock:
            self.counters.put_noops += 1
        return old

    def _reserve(self, nbytes: int) -> None:
        """Make room under the disk cap for a put of nbytes, evicting LRU unpinned documents."""
        cap = self.config.disk_bytes
        if not cap:
            with self._lock:
                self._reserved += nbytes
            return
        if nbytes > cap:
            raise ResourceExhausted(f"document needs {nbytes} bytes, more than the disk cap of {cap}")
        while True:
            with self._lock:
                if self._used + self._reserved + nbytes <= cap:
                    self._reserved += nbytes
                    return
                victim = next((r for r in self._docs.values() if not r.meta.pinned), None)
            if victim is None:
                raise ResourceExhausted(
                    f"disk cap of {cap} bytes reached: {self._used} used, {self._reserved} reserved by puts "
                    f"in progress, the rest pinned; cannot fit {nbytes} more")
            if self._remove(victim.doc_id, evicted=True):
                log.info("evicted document %s (%d bytes) from disk", victim.doc_id, victim.meta.nbytes)

    def _unreserve(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes

    def _commit(self, session: PutSession, record: DocRecord) -> DocMeta:
        try:
            with self._commit_lock:
                with self._lock:
                    dup = self._docs.get(record.doc_id)
                if dup is not None:  # a concurrent put of the same document won
                    session.staging.abort()
                    with self._lock:
                        self.counters.put_noops += 1
                    return dup.meta
                session.staging.commit(record)
                with self._lock:
                    self._docs[record.doc_id] = record
                    self._used += record.meta.nbytes
                    self.counters.puts += 1
                return record.meta
        except BaseException:
            session.staging.abort()
            with self._lock:
                self.counters.put_aborts += 1
            raise
        finally:
            self._unreserve(session.nbytes)

    def _abort(self, session: PutSession) -> None:
        try:
            session.staging.abort()
        finally:
            self._unreserve(session.nbytes)
            with self._lock:
                self.counters.put_aborts += 1

    def delete(self, doc_id: str) -> None:
        check_doc_id(doc_id)
        if not self._remove(doc_id, evicted=False):
            raise DocumentNotFound(f"unknown document {doc_id}")

    def _remove(self, doc_id: str, evicted: bool) -> bool:
        with self._commit_lock:
            with self._lock:
                rec = self._docs.pop(doc_id, None)
                if rec is None:
                    return False
                self._used -= rec.meta.nbytes
                if evicted:
                    self.counters.disk_evictions += 1
                else:
                    self.counters.deletes += 1
            self.ram.drop(lambda k: k[0] == doc_id)
            self.disk.delete(rec)
            return True

    def pin(self, doc_id: str, pinned: bool = True) -> None:
        rec = self.record(doc_id, touch=False)
        with self._commit_lock:
            new = DocRecord(replace(rec.meta, pinned=bool(pinned)), rec.l1, rec.chunk_crcs, rec.token)
            self.disk.update_record(new)
            with self._lock:
                if doc_id in self._docs:
                    self._docs[doc_id] = new

    # -- reads ----------------------------------------------------------------------------------

    def check_chunks(self, rec: DocRecord, chunk_ids: Sequence[int], layers: tuple[int, int] | None) -> tuple[int, int]:
        """Validate a fetch request; returns the layer range [l0, l1)."""
        n, n_layers = rec.meta.layout.n_chunks, rec.meta.layout.n_layers
        for c in chunk_ids:
            if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c < n:
                raise InvalidArgument(f"chunk id {c!r} out of range [0, {n}) for document {rec.doc_id}")
        if layers is None:
            return 0, n_layers
        try:
            l0, l1 = (int(x) for x in layers)
        except (TypeError, ValueError):
            raise InvalidArgument(f"layers must be a pair (start, stop), got {layers!r}") from None
        if not 0 <= l0 < l1 <= n_layers:
            raise InvalidArgument(f"layer range [{l0}, {l1}) out of range for {n_layers} layers")
        return l0, l1

    def chunk(self, rec: DocRecord, c: int) -> np.ndarray:
        """Verified, read-only chunk c [n_layers, 2, n_kv_heads, len_c, head_dim]: RAM, else disk + promote."""
        key = (rec.doc_id, c)
        arr = self.ram.get(key)
        if arr is None:
            arr = self._load_and_promote(rec, c)
        return arr

    def _load_and_promote(self, rec: DocRecord, c: int) -> np.ndarray:
        """Read chunk c from disk, verify it, put it in the RAM tier. The bytes are read straight into their
        RAM home (a shared file of the daemon's arena, else a new array), layer by layer, each layer checked
        against its CRC as soon as it lands: one pass over the bytes, overlapped with the disk read."""
        key = (rec.doc_id, c)
        L = rec.meta.layout
        shape, nbytes = L.chunk_shape(c), L.chunk_nbytes(c)
        crcs, step = rec.chunk_crcs[c], nbytes // L.n_layers

        def fill(out: memoryview) -> None:
            bad = []

            def check(i: int) -> None:
                if crc32c(out[i * step:(i + 1) * step]) != crcs[i]:
                    bad.append(i)

            with self._disk_errors(rec, f"chunk {c}"):
                self.disk.read_into(rec, c, out, check)
            if bad:
                self._checksum_failed()
                raise DataLoss(f"chunk {c} of document {rec.doc_id} failed its checksum (layers {bad}); "
                               "refusing to return it")

        place = getattr(self.ram.allocator, "place", None)
        arr = place(key, shape, L.np_dtype, fill) if place is not None and nbytes <= self.ram.capacity else None
        if arr is None:  # no allocator, or no room in shared memory: a heap array (not offered to it again)
            arr = np.empty(shape, L.np_dtype)
            fill(memoryview(arr.reshape(-1).view(np.uint8)))
            arr.flags.writeable = False
        self.ram.put(key, arr, placed=True)
        return arr

    @contextmanager
    def _disk_errors(self, rec: DocRecord, what: str):
        """Counts a disk read; maps a missing or wrong-size value to DataLoss (or NOT_FOUND if deleted)."""
        with self._lock:
            self.counters.disk_reads += 1
        try:
            yield
        except (FileNotFoundError, KeyError):
            if not self._alive(rec.doc_id):
                raise DocumentNotFound(f"document {rec.doc_id} was deleted") from None
            self._checksum_failed()
            raise DataLoss(f"{what} of document {rec.doc_id} is missing on disk") from None
        except ValueError as e:  # wrong size
            self._checksum_failed()
            raise DataLoss(f"{what} of document {rec.doc_id} is damaged on disk: {e}") from None

    def fetch(self, doc_id: str, chunk_ids: Sequence[int], layers: tuple[int, int] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
        """Validates now, then yields (c, read-only view [l1-l0, 2, n_kv_heads, len_c, head_dim])."""
        rec = self.record(doc_id)
        chunk_ids = [int(c) for c in chunk_ids] if not isinstance(chunk_ids, int) else chunk_ids
        l0, l1 = self.check_chunks(rec, chunk_ids, layers)

        def gen():
            if len(chunk_ids) > 1:  # let the disk read the missing ones while the first are verified and sent
                missing = [c for c in chunk_ids if not self.ram.contains((rec.doc_id, c))]
                if missing:
                    try:
                        self.disk.will_need(rec, missing)
                    except Exception as e:  # noqa: BLE001 - a hint only; the reads report real problems
                        log.debug("readahead hint failed: %s", e)
            for c in chunk_ids:
                view = self.chunk(rec, c)[l0:l1]
                with self._lock:
                    self.counters.fetched_chunks += 1
                    self.counters.fetched_bytes += view.nbytes
                yield c, view
        return gen()

    def l1(self, doc_id: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Verified, read-only L1 parts (all of them by default)."""
        rec = self.record(doc_id)
        specs = rec.l1 if not names else [rec.l1_spec(n) for n in names]
        out = {}
        for spec in specs:
            key = (rec.doc_id, "l1", spec.name)
            arr = self.ram.get(key)
            if arr is None:
                arr = self._load_l1(rec, spec)
                self.ram.put(key, arr)
            out[spec.name] = arr
        return out

    def _load_l1(self, rec: DocRecord, spec: TensorSpec) -> np.ndarray:
        with self._lock:
            self.counters.disk_reads += 1
        try:
            arr = self.disk.read_l1(rec, spec)
        except (FileNotFoundError, KeyError):
            if not self._alive(rec.doc_id):
                raise DocumentNotFound(f"document {rec.doc_id} was deleted") from None
            self._checksum_failed()
            raise DataLoss(f"L1 part {spec.name!r} of document {rec.doc_id} is missing on disk") from None
        except ValueError as e:
            self._checksum_failed()
            raise DataLoss(f"L1 part {spec.name!r} of document {rec.doc_id} is damaged on disk: {e}") from None
        if crc32c(np.require(arr, requirements="C")) != spec.crc32c:
            self._checksum_failed()
            raise DataLoss(f"L1 part {spec.name!r} of document {rec.doc_id} failed its checksum")
        return arr

    def _alive(self, doc_id: str) -> bool:
        with self._lock:
            return doc_id in self._docs

    def _checksum_failed(self) -> None:
        with self._lock:
            self.counters.checksum_failures += 1

    def prefetch(self, doc_id: str, chunk_ids: Sequence[int] | None = None) -> None:
        """Promote chunks (all by default) to the RAM tier in the background; returns at once."""
        rec = self.record(doc_id)
        ids = list(range(rec.meta.layout.n_chunks)) if chunk_ids is None else [int(c) for c in chunk_ids]
        self.check_chunks(rec, ids, None)
        self._prefetcher.submit(self._promote, rec, ids)

    def _promote(self, rec: DocRecord, ids: list[int]) -> None:
        for c in ids:
            key = (rec.doc_id, c)
            if self.ram.contains(key):
                continue
            try:
                self._load_and_promote(rec, c)
            except StoreError as e:
                log.warning("prefetch of %s chunk %d failed: %s", rec.doc_id, c, e)
                return

    # -- accounting -----------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        r = self.ram.stats
        with self._lock:
            c = self.counters
            return StoreStats(
                backend=self.backend, path=self.path, format_version=FORMAT_VERSION,
                n_docs=len(self._docs), n_pinned=sum(1 for x in self._docs.values() if x.meta.pinned),
                ram=RamTierStats(used_bytes=self.ram.used, capacity_bytes=self.ram.capacity, entries=len(self.ram),
                                 hits=r.hits, misses=r.misses, evictions=r.evictions, inserts=r.inserts,
                                 skipped=r.skipped),
                disk=DiskTierStats(used_bytes=self._used, capacity_bytes=self.config.disk_bytes,
                                   reserved_bytes=self._reserved, reads=c.disk_reads, evictions=c.disk_evictions,
                                   checksum_failures=c.checksum_failures),
                ops=OpStats(puts=c.puts, put_noops=c.put_noops, put_aborts=c.put_aborts,
                            fetched_chunks=c.fetched_chunks, fetched_bytes=c.fetched_bytes, deletes=c.deletes,
                            discarded_at_start=self.discarded_at_start))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
        self.ram.clear()
        self.disk.close()
        self._lockfile.close()
