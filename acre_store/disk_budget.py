"""DiskBudget: room under the disk cap for the puts in progress.

A put reserves its payload bytes when it starts (for the stats; it fails at once if the pinned documents
leave no room for it); the reservation ends when it commits (its bytes are then the document's, in
`DocIndex.used_bytes`) or aborts. Nothing is evicted for a put until it commits: then whole
least-recently-used unpinned documents go until the committed ones fit under the cap again. So a put that
never delivers its bytes (a header, then a cancel) evicts nothing; while puts are in progress their staged
bytes may take the disk over the cap by their size.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from .doc_index import DocIndex
from .errors import ResourceExhausted
from .record import DocRecord

log = logging.getLogger(__name__)


class DiskBudget:
    def __init__(self, cap_bytes: int, index: DocIndex, evict: Callable[[DocRecord], bool]):
        """cap_bytes: 0 means no cap. evict(record): remove a document, False if it was already gone."""
        self.cap = cap_bytes
        self.index, self.evict = index, evict
        self._reserved = 0
        # NOTE: held while `index.used_bytes` is read, and a commit adds its bytes to the index before it
        # releases its reservation here: so used + reserved can count a put twice for a moment, never zero times.
        self._lock = threading.Lock()

    @property
    def reserved(self) -> int:
        """Bytes reserved by puts in progress."""
        with self._lock:
            return self._reserved

    def reserve(self, nbytes: int) -> None:
        """Count a put of nbytes in progress; ResourceExhausted if it could not fit even after evicting."""
        self.check_room(nbytes)
        with self._lock:
            self._reserved += nbytes

    def check_room(self, nbytes: int) -> None:
        """ResourceExhausted if a document of nbytes cannot fit under the cap beside the pinned ones."""
        cap = self.cap
        if not cap:
            return
        if nbytes > cap:
            raise ResourceExhausted(f"document needs {nbytes} bytes, more than the disk cap of {cap}")
        pinned = self.index.pinned_bytes()
        if pinned + nbytes > cap:
            raise ResourceExhausted(f"disk cap of {cap} bytes reached: {pinned} bytes pinned; cannot fit {nbytes} more")

    def evict_over_cap(self, keep: str) -> None:
        """Evict LRU unpinned documents other than `keep` (the one just committed) until the committed
        documents fit under the cap. The caller holds the store's commit lock."""
        while self.cap and self.index.used_bytes > self.cap:
            victim = self.index.lru_unpinned(exclude=keep)
            if victim is None:
                return
            if self.evict(victim):
                log.info("evicted document %s (%d bytes) from disk", victim.doc_id, victim.meta.nbytes)

    def release(self, nbytes: int) -> None:
        """End a reservation (the put committed or aborted)."""
        with self._lock:
            self._reserved -= nbytes
