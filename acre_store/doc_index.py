"""DocIndex: the committed documents of a store, least recently used first, and their bytes on disk.

The order is the disk tier's LRU (what the disk cap evicts first): `get` with `touch` marks a document
used; at start-up the order is creation time. `used_bytes` is the sum of the documents' `nbytes`, so it
is exact and the same across restarts.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable

from .errors import DocumentNotFound
from .record import DocRecord
from .types import DocMeta


class DocIndex:
    def __init__(self, records: Iterable[DocRecord]):
        self._docs: OrderedDict[str, DocRecord] = OrderedDict(
            (r.doc_id, r) for r in sorted(records, key=lambda r: r.meta.created))
        self._used = sum(r.meta.nbytes for r in self._docs.values())
        self._lock = threading.Lock()

    def get(self, doc_id: str, touch: bool = True) -> DocRecord:
        """The document's record (DocumentNotFound if absent); `touch` marks it most recently used."""
        with self._lock:
            rec = self._docs.get(doc_id)
            if rec is None:
                raise DocumentNotFound(f"unknown document {doc_id}")
            if touch:
                self._docs.move_to_end(doc_id)
            return rec

    def find(self, doc_id: str) -> DocRecord | None:
        """The document's record, or None; the LRU order is left alone."""
        with self._lock:
            return self._docs.get(doc_id)

    def __contains__(self, doc_id: str) -> bool:
        with self._lock:
            return doc_id in self._docs

    def __len__(self) -> int:
        with self._lock:
            return len(self._docs)

    def metas(self) -> list[DocMeta]:
        """Every document's meta, oldest first (by creation time, then id)."""
        with self._lock:
            return sorted((r.meta for r in self._docs.values()), key=lambda m: (m.created, m.doc_id))

    def add(self, record: DocRecord) -> None:
        """A newly committed document, as the most recently used."""
        with self._lock:
            self._docs[record.doc_id] = record
            self._used += record.meta.nbytes

    def pop(self, doc_id: str) -> DocRecord | None:
        """Remove the document; its record, or None if it was not there."""
        with self._lock:
            rec = self._docs.pop(doc_id, None)
            if rec is not None:
                self._used -= rec.meta.nbytes
            return rec

    def replace(self, record: DocRecord) -> None:
        """A new record for a document still there (e.g. after pin), keeping its place in the LRU order."""
        with self._lock:
            if record.doc_id in self._docs:
                self._docs[record.doc_id] = record

    def lru_unpinned(self, exclude: str | None = None) -> DocRecord | None:
        """The least recently used document that is not pinned (the next to evict) other than `exclude`, or None."""
        with self._lock:
            return next((r for r in self._docs.values() if not r.meta.pinned and r.doc_id != exclude), None)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    def pinned_bytes(self) -> int:
        with self._lock:
            return sum(r.meta.nbytes for r in self._docs.values() if r.meta.pinned)

    def n_pinned(self) -> int:
        with self._lock:
            return sum(1 for r in self._docs.values() if r.meta.pinned)
