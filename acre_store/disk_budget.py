"""DiskBudget: room under the disk cap for the puts in progress.

A put reserves its payload bytes when it starts, so two puts cannot both count on the same free room;
the reservation ends when it commits (its bytes are then the document's, in `DocIndex.used_bytes`) or
aborts. When the cap is reached, whole least-recently-used unpinned documents are evicted first.
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
        """Make room for a put of nbytes, evicting LRU unpinned documents; ResourceExhausted if it cannot."""
        cap = self.cap
        if not cap:
            with self._lock:
                self._reserved += nbytes
            return
        if nbytes > cap:
            raise ResourceExhausted(f"document needs {nbytes} bytes, more than the disk cap of {cap}")
        while True:
            with self._lock:
                used = self.index.used_bytes
                if used + self._reserved + nbytes <= cap:
                    self._reserved += nbytes
                    return
                victim = self.index.lru_unpinned()
                reserved = self._reserved
            if victim is None:
                raise ResourceExhausted(
                    f"disk cap of {cap} bytes reached: {used} used, {reserved} reserved by puts "
                    f"in progress, the rest pinned; cannot fit {nbytes} more")
            if self.evict(victim):
                log.info("evicted document %s (%d bytes) from disk", victim.doc_id, victim.meta.nbytes)

    def release(self, nbytes: int) -> None:
        """End a reservation (the put committed or aborted)."""
        with self._lock:
            self._reserved -= nbytes
