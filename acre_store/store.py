"""The store itself: a plain object, no socket. The gRPC servicer and `EmbeddedStore` are thin layers over it.

`Store` owns one data directory (`DataDir`: an exclusive flock keeps any second process out) holding one
disk tier (Zarr v3 or LMDB), and ties together the parts that each do one job:

    DocIndex     doc_index.py     the committed documents, in disk-LRU order, and their bytes
    DiskBudget   disk_budget.py   room under the disk cap for puts in progress; evicts LRU unpinned documents
    PutSession   put_session.py   one document being written: parts checked and staged, then committed
    TierReader   tier_reader.py   reads: RAM tier first, then disk (checksum-verified, promoted to RAM); prefetch
    ObjectTier   tiers/object_tier.py   optional shared bucket: puts publish there, local misses read through
    StoreStats   stats.py         counters, and the snapshot `stats()` returns

Here: publishing and removing documents (serialised against each other), pinning, and the stats.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np

from .config import DEFAULT_RAM_BYTES, StoreConfig
from .data_dir import DataDir
from .disk_budget import DiskBudget
from .doc_index import DocIndex
from .errors import DocumentNotFound, InvalidArgument, LayoutMismatch, StoreUnavailable
from .put_session import PutSession
from .record import DocRecord, TensorSpec
from .stats import DiskTierStats, OpStats, RamTierStats, StoreCounters, StoreStats
from .tier_reader import TierReader
from .tiers.ram_tier import Allocator, RamTier
from .types import FORMAT_VERSION, MAX_CHUNK_BYTES, DocMeta, check_doc_id

__all__ = ["DEFAULT_RAM_BYTES", "PutSession", "Store", "StoreConfig"]

log = logging.getLogger(__name__)


class Store:
    def __init__(self, config: StoreConfig, allocator: Allocator | None = None):
        """allocator: where the RAM tier keeps chunk bytes (see tiers/ram_tier.py); default: process heap."""
        self.config = config
        self.data_dir = DataDir(config)
        self.path, self.backend, self.disk = self.data_dir.path, self.data_dir.backend, self.data_dir.disk
        self.discarded_at_start = self.data_dir.discarded_at_start
        self.index = DocIndex(self.disk.records())  # damaged records are set aside (disk.quarantined)
        self.budget = DiskBudget(config.disk_bytes, self.index, lambda rec: self._remove_locked(rec.doc_id, evicted=True))
        self._commit_lock = threading.Lock()  # serialises publish/delete against each other
        self.counters = StoreCounters()
        self.ram = RamTier(config.ram_bytes, allocator=allocator)
        self.reader = TierReader(self.ram, self.disk, self.index, self.counters)
        self.objects = self.read_through = None
        if config.object_store is not None:
            from .read_through import ReadThrough
            from .tiers.object_tier import ObjectTier
            self.objects = ObjectTier(config.object_store)
            self.read_through = ReadThrough(self.objects, self)
            self.reader.ahead = self.read_through.ahead
        self._closed = False
        log.info("store %s (%s): %d documents, %d bytes", self.path, self.backend, len(self.index),
                 self.index.used_bytes)

    # -- documents ------------------------------------------------------------------------------

    def record(self, doc_id: str, touch: bool = True, recheck: bool = False) -> DocRecord:
        """The committed document's record; `touch` marks it most recently used (disk LRU). `recheck` (a
        read: Info, Fetch, L1): with an object store, a local copy whose manifest was not seen in the bucket
        for `recheck_s` is checked there, and dropped (DocumentNotFound) if it was deleted meanwhile."""
        check_doc_id(doc_id)
        rt = self.read_through
        if rt is not None:
            if recheck and (doc_id in self.index or rt.landing(doc_id)) and not rt.recheck(doc_id):
                self._drop_deleted(doc_id)
            if doc_id not in self.index:
                rec = rt.record(doc_id)  # landing, else from the bucket; served while it lands on disk
                if rec is not None:
                    return rec
        return self.index.get(doc_id, touch)

    def _drop_deleted(self, doc_id: str) -> None:
        """The document was deleted from the bucket through another daemon: so it is here."""
        with self.objects.doc_lock(doc_id):
            dropped = self._remove(doc_id, evicted=False) | self.read_through.forget(doc_id)
        if dropped:
            self.objects._count(dropped_deleted=1)
            log.info("document %s was deleted from %s: local copy dropped", doc_id, self.objects.url)
        raise DocumentNotFound(f"document {doc_id} was deleted (it is gone from {self.objects.url})")

    def info(self, doc_id: str) -> DocMeta:
        return self.record(doc_id, recheck=True).meta

    def list(self) -> list[DocMeta]:
        """Every document here, and with an object store every document published there."""
        if self.objects is None:
            return self.index.metas()
        from .tiers.object_tier import iter_unique
        return iter_unique([*self.index.metas(), *self.objects.list()])

    def begin_put(self, meta: DocMeta, l1: list[TensorSpec]) -> PutSession | None:
        """A session to write the document, or None if it is already stored (a put is then a no-op)."""
        meta.validate()
        names = [s.name for s in l1]
        if len(set(names)) != len(names):
            raise InvalidArgument("duplicate L1 part names")
        too_big = [s.name for s in l1 if s.nbytes > MAX_CHUNK_BYTES]
        if too_big:
            raise InvalidArgument(f"L1 parts {too_big} are larger than {MAX_CHUNK_BYTES} bytes")
        existing = self._existing(meta)
        if existing is not None:
            return None
        nbytes = meta.layout.kv_nbytes + sum(s.nbytes for s in l1)
        self.budget.reserve(nbytes)
        try:
            staging = self.disk.stage(meta.doc_id, meta.layout, l1)
            if self.objects is not None:  # uploads shards as chunks arrive; the manifest at commit
                staging = self.objects.publishing(staging, meta, l1)
        except BaseException:
            self.budget.release(nbytes)
            raise
        return PutSession(meta, l1, staging, nbytes, publish=self._commit, discard=self._abort)

    def _existing(self, meta: DocMeta) -> DocMeta | None:
        rec = self.index.find(meta.doc_id)
        if rec is None:
            return None
        old = rec.meta
        if old.layout != meta.layout or old.model_fingerprint != meta.model_fingerprint:
            raise LayoutMismatch(f"document {meta.doc_id} is already stored with another layout or model "
                                 f"(stored {old.layout}, fingerprint {old.model_fingerprint})")
        self.counters.add(put_noops=1)
        return old

    def _commit(self, session: PutSession, record: DocRecord) -> DocMeta:
        try:
            if self.objects is not None:  # in the bucket first: a local copy is then always also there
                session.staging.publish(record)
            with self._commit_lock:
                dup = self._existing(record.meta)  # LayoutMismatch if it differs
                if dup is not None:  # a concurrent put of the same document won
                    session.staging.abort()
                    return dup
                self.budget.check_room(session.nbytes)  # documents pinned meanwhile may leave no room
                session.staging.commit(record)
                self.index.add(record)
                self.disk.drop_quarantined(record.doc_id)  # put again: the damaged copy goes
                self.budget.evict_over_cap(keep=record.doc_id)  # only now: a put that fails evicts nothing
                self.counters.add(puts=1)
                return record.meta
        except BaseException:
            session.staging.abort()
            self.counters.add(put_aborts=1)
            raise
        finally:
            self.budget.release(session.nbytes)

    def _abort(self, session: PutSession) -> None:
        try:
            session.staging.abort()
        finally:
            self.budget.release(session.nbytes)
            self.counters.add(put_aborts=1)

    def delete(self, doc_id: str) -> None:
        check_doc_id(doc_id)
        if self.objects is None:
            if not self._remove(doc_id, evicted=False):
                with self._commit_lock:
                    if self.disk.drop_quarantined(doc_id):  # a damaged document set aside at start-up
                        self.counters.add(deletes=1)
                        return
                raise DocumentNotFound(f"unknown document {doc_id}")
            return
        with self.objects.doc_lock(doc_id):  # waits for a read-through of it in progress
            found = self._remove(doc_id, evicted=False) | self.read_through.forget(doc_id)
            with self._commit_lock:
                if self.disk.drop_quarantined(doc_id):
                    self.counters.add(deletes=1)
                    found = True
            try:
                found |= self.objects.delete(doc_id)
            except StoreUnavailable as e:
                where = "deleted from this daemon's tiers but " if found else ""
                raise StoreUnavailable(f"document {doc_id}: {where}not from the object store: {e}") from None
        if not found:
            raise DocumentNotFound(f"unknown document {doc_id}")

    def _remove(self, doc_id: str, evicted: bool) -> bool:
        with self._commit_lock:
            return self._remove_locked(doc_id, evicted)

    def _remove_locked(self, doc_id: str, evicted: bool) -> bool:
        rec = self.index.pop(doc_id)
        if rec is None:
            return False
        if evicted:
            self.counters.add(disk_evictions=1)
        else:
            self.counters.add(deletes=1)
        self.ram.drop(lambda k: k[0] == doc_id)
        self.disk.delete(rec)
        return True

    def pin(self, doc_id: str, pinned: bool = True) -> None:
        rec = self.record(doc_id, touch=False)
        if self.read_through is not None and doc_id not in self.index:
            self.read_through.wait_idle()  # a copy landing from the bucket: pin it once it is on disk
            rec = self.index.get(doc_id, touch=False)
        with self._commit_lock:
            new = DocRecord(replace(rec.meta, pinned=bool(pinned)), rec.l1, rec.chunk_crcs, rec.token)
            self.disk.update_record(new)
            self.index.replace(new)

    # -- reads (tier_reader.py) -----------------------------------------------------------------

    def fetch(self, doc_id: str, chunk_ids: Sequence[int], layers: tuple[int, int] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
        """Validates now, then yields (c, read-only view [l1-l0, 2, n_kv_heads, len_c, head_dim])."""
        return self.reader.fetch(self.record(doc_id, recheck=True), chunk_ids, layers)

    def l1(self, doc_id: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Verified, read-only L1 parts (all of them by default)."""
        return self.reader.l1(self.record(doc_id, recheck=True), names)

    def prefetch(self, doc_id: str, chunk_ids: Sequence[int] | None = None) -> None:
        """Promote chunks (all by default) to the RAM tier in the background; returns at once."""
        self.reader.prefetch(self.record(doc_id), chunk_ids)

    def wait_idle(self) -> None:
        """Return once every prefetch started so far has finished."""
        self.reader.wait_idle()

    # -- accounting -----------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        r, c = self.ram.stats, self.counters.snapshot()
        return StoreStats(
            backend=self.backend, path=self.path, format_version=FORMAT_VERSION,
            n_docs=len(self.index), n_pinned=self.index.n_pinned(),
            ram=RamTierStats(used_bytes=self.ram.used, capacity_bytes=self.ram.capacity, entries=len(self.ram),
                             hits=r.hits, misses=r.misses, evictions=r.evictions, inserts=r.inserts,
                             skipped=r.skipped),
            disk=DiskTierStats(used_bytes=self.index.used_bytes, capacity_bytes=self.config.disk_bytes,
                               reserved_bytes=self.budget.reserved, reads=c.disk_reads,
                               evictions=c.disk_evictions, checksum_failures=c.checksum_failures),
            ops=OpStats(puts=c.puts, put_noops=c.put_noops, put_aborts=c.put_aborts,
                        fetched_chunks=c.fetched_chunks, fetched_bytes=c.fetched_bytes, deletes=c.deletes,
                        discarded_at_start=self.discarded_at_start),
            quarantined=dict(self.disk.quarantined),
            object_store=None if self.objects is None else {**self.objects.stats(),
                                                            "landing": self.read_through.n_landing})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.reader.close()
        if self.objects is not None:
            self.read_through.close()
            self.objects.close()
        self.ram.clear()
        self.data_dir.close()
