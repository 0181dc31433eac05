"""Capacity: RAM LRU by bytes, whole-document LRU eviction on disk (pinned exempt), exact accounting."""
from __future__ import annotations

import pytest

from acre_store import EmbeddedStore, ResourceExhausted

from .support import TINY, assert_doc_equal, make_doc

CHUNK = TINY.chunk_nbytes(0)  # 4096 bytes


def ram_keys(store) -> list:
    return store.store.ram.keys()


def test_ram_tier_lru_order_cap_and_counters(tmp_path, backend):
    doc = make_doc(TINY)
    with EmbeddedStore(str(tmp_path / "s"), backend=backend, ram_bytes=3 * CHUNK) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
        list(s.fetch(doc.doc_id, [0, 1, 2]))
        list(s.fetch(doc.doc_id, [0]))  # 0 becomes most recent: 1 is now the oldest
        list(s.fetch(doc.doc_id, [3], layers=(0, 1)))  # a layer range still caches the whole chunk
        assert ram_keys(s) == [(doc.doc_id, 2), (doc.doc_id, 0), (doc.doc_id, 3)]
        ram = s.stats().ram
        assert (ram.hits, ram.misses, ram.evictions, ram.entries) == (1, 4, 1, 3)
        assert ram.used_bytes == 3 * CHUNK <= ram.capacity_bytes
        assert s.stats().disk.reads == 4
        list(s.fetch(doc.doc_id, range(TINY.n_chunks)))  # the short last chunk fits beside two others
        assert s.stats().ram.used_bytes <= 3 * CHUNK


def test_ram_cap_smaller_than_a_chunk_still_serves(tmp_path):
    doc = make_doc(TINY)
    with EmbeddedStore(str(tmp_path / "s"), ram_bytes=CHUNK - 1) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(s, doc)
        assert s.stats().ram.used_bytes <= CHUNK - 1


def test_disk_cap_evicts_least_recently_used_unpinned_documents(tmp_path, backend):
    a, b, c, d, e = (make_doc(TINY, seed=i) for i in range(5))
    per_doc = TINY.kv_nbytes + sum(x.nbytes for x in a.l1.values())
    with EmbeddedStore(str(tmp_path / "s"), backend=backend, disk_bytes=2 * per_doc) as s:
        s.put(a.meta, a.l1, a.chunks)
        s.put(b.meta, b.l1, b.chunks)
        s.info(a.doc_id)  # a used more recently than b
        s.put(c.meta, c.l1, c.chunks)
        assert {m.doc_id for m in s.list()} == {a.doc_id, c.doc_id}
        s.pin(a.doc_id)
        list(s.fetch(c.doc_id, [0]))  # c is now the most recent, but a is pinned
        s.put(d.meta, d.l1, d.chunks)
        assert {m.doc_id for m in s.list()} == {a.doc_id, d.doc_id}
        s.pin(d.doc_id)
        with pytest.raises(ResourceExhausted, match="pinned"):
            s.put(e.meta, e.l1, e.chunks)
        st = s.stats().disk
        assert st.evictions == 2 and st.used_bytes == 2 * per_doc and st.reserved_bytes == 0
        assert_doc_equal(s, a)
        assert_doc_equal(s, d)
    with EmbeddedStore(str(tmp_path / "s"), disk_bytes=per_doc) as s:  # a smaller cap after a restart
        assert s.stats().disk.used_bytes == 2 * per_doc  # exact across the restart
        s.pin(a.doc_id, False)
        s.delete(d.doc_id)
        assert s.stats().disk.used_bytes == per_doc
        s.put(e.meta, e.l1, e.chunks)  # evicts a (now unpinned)
        assert [m.doc_id for m in s.list()] == [e.doc_id]
        assert s.stats().disk.used_bytes == per_doc


def test_document_larger_than_the_disk_cap(tmp_path):
    doc = make_doc(TINY)
    with EmbeddedStore(str(tmp_path / "s"), disk_bytes=TINY.kv_nbytes) as s:
        with pytest.raises(ResourceExhausted, match="more than the disk cap"):
            s.put(doc.meta, doc.l1, doc.chunks)
        assert s.list() == [] and s.stats().disk.used_bytes == 0
