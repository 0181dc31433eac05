"""Same-host fast path: chunks read from the daemon's shared-memory files, leases, fallbacks, cleanup."""
from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

from acre_store import DocumentNotFound
from acre_store.shared import SharedArena
from acre_store.tiers.ram_tier import RamTier

from .support import REAL, TINY, assert_doc_equal, make_doc


def shm_files(stats) -> list[str]:
    return os.listdir(stats.shared["dir"])


def test_fast_path_is_used_and_byte_exact(daemon):
    doc = make_doc(REAL)
    with daemon.client(writable=True) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(c, doc)  # disk-cold: read into shared memory, then leased
        for cid, arr in c.fetch(doc.doc_id, [2, 0], layers=(5, 9)):  # RAM-hot, a layer range
            assert arr.tobytes() == doc.chunks[cid][5:9].tobytes() and arr.flags.writeable
            arr[...] = 0  # the caller's own copy
        st = c.stats().shared
        # The last call's leases end with the client's next Fetch (or its close).
        assert st["leases_granted"] == REAL.n_chunks + 2 and st["leases_active"] == 2
        assert st["files"] == REAL.n_chunks == len(shm_files(c.stats()))
        list(c.fetch(doc.doc_id, [1]))
    with daemon.client() as c:
        st = c.stats().shared
        assert st["leases_granted"] == REAL.n_chunks + 3 and st["leases_active"] == 0
        assert_doc_equal(c, doc)  # the zeros went into the copies only
        c.delete(doc.doc_id)
        assert shm_files(c.stats()) == []


def test_mapped_views_are_read_only_byte_exact_and_leased(daemon):
    doc = make_doc(REAL)
    with daemon.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, range(REAL.n_chunks)))  # promote (cold reads), leases end with the next call
        got = dict(c.fetch(doc.doc_id, [3, 1], layers=(7, 30)))  # RAM-hot: read-only mappings, no copy
        for cid, arr in got.items():
            assert arr.shape == doc.chunks[cid][7:].shape and arr.tobytes() == doc.chunks[cid][7:].tobytes()
            assert not arr.flags.writeable and arr.flags.aligned and arr.flags.c_contiguous
            with pytest.raises(ValueError):
                arr[0, 0, 0, 0, 0] = 1.0
        (_, last), = c.fetch(doc.doc_id, [REAL.n_chunks - 1], layers=(0, 1))  # the short chunk, one layer
        assert last.tobytes() == doc.chunks[-1][:1].tobytes()
        # A lease lasts as long as its mapping: the two views above and `last` are alive.
        assert c.stats().shared["leases_active"] == 3
        list(c.fetch(doc.doc_id, [0]))  # its view is garbage at once; its lease ends with the next Fetch
        assert c.stats().shared["leases_active"] == 4
        view = got[3][2:5]  # a view of a view keeps the mapping, and so the lease
        del got, last, arr
        gc.collect()
        list(c.fetch(doc.doc_id, [0]))
        assert c.stats().shared["leases_active"] == 2  # `view`'s, and the last [0]'s (ends with the next call)
        assert view.tobytes() == doc.chunks[3][9:12].tobytes()
        with daemon.client() as other:  # a view outlives its file: files are never rewritten, only unlinked
            other.delete(doc.doc_id)
        assert shm_files(c.stats()) == []
        assert view.tobytes() == doc.chunks[3][9:12].tobytes()


def test_socket_arrays_are_views_or_copies(daemon):
    doc = make_doc(REAL)
    with daemon.client(shared=False) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        for cid, arr in c.fetch(doc.doc_id, [4, 0], layers=(2, 29)):
            assert arr.tobytes() == doc.chunks[cid][2:29].tobytes()
            assert not arr.flags.writeable and arr.flags.aligned
    with daemon.client(shared=False, writable=True) as c:
        for cid, arr in c.fetch(doc.doc_id, [4, 0]):
            assert arr.tobytes() == doc.chunks[cid].tobytes() and arr.flags.writeable


def test_socket_only_client_gets_the_same_bytes(daemon):
    doc = make_doc(TINY)
    with daemon.client(shared=False) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(c, doc)
        assert c.stats().shared["leases_granted"] == 0


def test_deleted_while_leased_falls_back_to_the_socket(daemon):
    doc = make_doc(TINY)
    with daemon.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, range(TINY.n_chunks)))  # all in shared memory now
        it = c.fetch(doc.doc_id, range(TINY.n_chunks))
        assert next(it)[0] == 0
        with daemon.client() as other:
            other.delete(doc.doc_id)
        with pytest.raises(DocumentNotFound):
            for cid, arr in it:  # frames already sent name files that are gone
                assert arr.tobytes() == doc.chunks[cid].tobytes()
    with daemon.client() as c:
        assert c.stats().shared["leases_active"] == 0


def test_daemon_shutdown_and_kill_leave_no_shared_files(daemon_factory):
    d = daemon_factory("lmdb")
    doc = make_doc(TINY)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, [0, 1]))
        arena = c.stats().shared["dir"]
    d.stop()
    assert not os.path.exists(arena)
    d.start()
    with d.client() as c:
        list(c.fetch(doc.doc_id, [0, 1]))
        arena = c.stats().shared["dir"]
    d.kill9()
    assert os.path.exists(arena)
    d.start()  # a new daemon removes arenas of dead ones
    assert not os.path.exists(arena)


class _Heap:
    """An allocator that records frees (stands in for the shared arena)."""

    def __init__(self):
        self.freed = []

    def alloc(self, key, arr):
        return arr.copy()

    def free(self, key, arr, reusable=True):
        self.freed.append(key)


def test_leased_entries_are_not_evicted():
    heap = _Heap()
    ram = RamTier(3 * 100, allocator=heap)
    for k in "abc":
        assert ram.put(k, np.zeros(100, np.uint8))
    assert ram.lease("a") is not None  # the oldest, but leased
    assert ram.put("d", np.zeros(100, np.uint8))
    assert ram.keys() == ["a", "c", "d"] and heap.freed == ["b"]
    ram.lease("c")
    ram.lease("d")
    assert not ram.put("e", np.zeros(100, np.uint8))  # no room without evicting a leased entry
    assert heap.freed == ["b", "e"] and ram.stats.skipped == 1
    ram.release("a")
    assert ram.put("e", np.zeros(100, np.uint8)) and "a" not in ram.keys()
    assert ram.used == 300


def test_expired_leases_are_reaped(tmp_path, monkeypatch):
    arena = SharedArena(root=str(tmp_path))
    ram = RamTier(1 << 20, allocator=arena)
    arena.ram = ram
    ram.put(("d" * 16, 0), np.arange(64, dtype=np.float32).reshape(4, 16))
    ref = arena.lease("d" * 16, 0, 1, 3)
    assert ref.length == 2 * 64 and ref.offset == 64
    with open(ref.path, "rb") as f:
        f.seek(ref.offset)
        assert np.array_equal(np.frombuffer(f.read(ref.length), np.float32), np.arange(16, 48, dtype=np.float32))
    assert ram.leases() == {("d" * 16, 0): 1}
    arena.reap_leases(time.monotonic() + 3600)
    assert ram.leases() == {} and arena.stats()["leases_expired"] == 1
    ram.clear()
    assert os.listdir(arena.dir) == []
    arena.close()


def _arena_with_room_for(tmp_path, n_entries: int, nbytes: int = 4096):
    arena = SharedArena(root=str(tmp_path))
    ram = RamTier(n_entries * nbytes, allocator=arena)
    arena.ram = ram
    return arena, ram


def _block(i: int, nbytes: int = 4096) -> np.ndarray:
    return np.full(nbytes // 4, i, np.float32).reshape(4, -1)


def test_evicted_files_are_reused_under_new_names(tmp_path):
    arena, ram = _arena_with_room_for(tmp_path, 2)
    paths = []
    for i in range(6):  # each insert after the second evicts the oldest; its file comes back for the next one
        assert ram.put(("d" * 16, i), _block(i))
        ref = arena.lease("d" * 16, i, 0, 4)
        paths.append(ref.path)
        with open(ref.path, "rb") as f:  # the path a client gets names this chunk's bytes
            assert f.read() == _block(i).tobytes()
        arena.release([ref.lease])
    st = arena.stats()
    assert st["reused"] == 3 and st["files"] == 2 and st["pool_files"] == 1
    assert len(set(paths)) == 6  # a path always names the same bytes
    for i in (4, 5):
        assert np.array_equal(ram.get(("d" * 16, i)), _block(i))
    assert len(os.listdir(arena.dir)) == 3  # two entries and one pooled file
    arena.close()


def test_a_file_that_may_be_read_is_never_rewritten(tmp_path):
    """Leased (the entry is pinned), expired lease (a client may still map it), a view the daemon still
    holds (a send in progress), a deleted document: none of these files is handed to another chunk."""
    arena, ram = _arena_with_room_for(tmp_path, 1)
    ram.put(("a" * 16, 0), _block(1))
    ref = arena.lease("a" * 16, 0, 0, 4)
    with open(ref.path, "rb") as f:  # a client reading under the lease
        assert not ram.put(("a" * 16, 1), _block(2))  # pinned: no room, the new chunk is not cached
        arena.reap_leases(time.monotonic() + 3600)  # the lease expires: the file is tainted
        assert ram.put(("a" * 16, 2), _block(3))  # evicts it: unlinked, not pooled
        assert arena.stats()["pool_files"] == 0
        assert ram.put(("a" * 16, 3), _block(4))
        assert np.array_equal(np.frombuffer(f.read(), np.float32), _block(1).ravel())  # still the old bytes
    view = ram.get(("a" * 16, 3))[1:]  # the daemon sending from the entry
    assert ram.put(("a" * 16, 4), _block(5))  # evicts chunk 3's entry, whose bytes are still being read
    assert arena.stats()["pool_files"] == 0 and np.array_equal(view, _block(4)[1:])
    del view
    gc.collect()
    assert arena.stats()["pool_files"] == 1  # now nobody reads it: pooled
    ram.drop(lambda k: True)  # the document is deleted: its bytes are not kept in the pool
    assert arena.stats()["pool_files"] == 1 and arena.stats()["files"] == 0
    assert sorted(os.listdir(arena.dir)) == [n for n in os.listdir(arena.dir) if n.startswith("pool-")]
    arena.close()


def test_a_failed_fill_leaves_no_file(tmp_path):
    """`place` hands `fill` the file's writable mapping (a cold read lands there directly); if `fill` fails
    (a checksum mismatch), the file, new or pooled, is discarded and nothing is cached."""
    arena, ram = _arena_with_room_for(tmp_path, 1)

    def bad(out):
        out[:8] = b"partial!"
        raise ValueError("checksum mismatch")

    with pytest.raises(ValueError, match="checksum"):  # a new file
        arena.place(("b" * 16, 0), (4, 256), np.float32, bad)
    assert os.listdir(arena.dir) == [] and arena.stats()["files"] == 0
    ram.put(("b" * 16, 1), _block(1))
    ram.put(("b" * 16, 2), _block(2))  # chunk 1's file goes to the pool
    gc.collect()
    assert arena.stats()["pool_files"] == 1
    with pytest.raises(ValueError, match="checksum"):  # the pooled file
        arena.place(("b" * 16, 3), (4, 256), np.float32, bad)
    assert arena.stats()["pool_files"] == 0 and len(os.listdir(arena.dir)) == 1  # only chunk 2's file
    good = arena.place(("b" * 16, 4), (4, 256), np.float32, lambda out: out.__setitem__(slice(None), _block(4).tobytes()))
    assert np.array_equal(good, _block(4)) and not good.flags.writeable
    arena.close()


def test_full_shared_memory_keeps_chunks_on_the_heap(tmp_path, monkeypatch):
    """/dev/shm full (ENOSPC from the write of a new file): the chunk is read onto the heap, cached there and
    served byte-exact; no file is left behind, and the arena is asked once per chunk, not again by the RAM
    tier."""
    import errno

    from acre_store import EmbeddedStore
    from acre_store import shared as shared_mod
    from acre_store.store import Store, StoreConfig

    doc = make_doc(TINY)
    with EmbeddedStore(str(tmp_path / "s"), ram_bytes=0) as s:
        s.put(doc.meta, doc.l1, doc.chunks)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shared_mod.os, "pwrite", full)
    arena = SharedArena(root=str(tmp_path))
    st = Store(StoreConfig(path=str(tmp_path / "s"), ram_bytes=1 << 20), allocator=arena)
    arena.ram = st.ram
    try:
        got = dict(st.fetch(doc.doc_id, range(TINY.n_chunks)))
        assert all(got[c].tobytes() == doc.chunks[c].tobytes() for c in range(TINY.n_chunks))
        assert arena.stats()["unplaced"] == TINY.n_chunks and arena.stats()["files"] == 0
        assert os.listdir(arena.dir) == [] and len(st.ram) == TINY.n_chunks  # cached on the heap
        assert arena.lease(doc.doc_id, 0, 0, TINY.n_layers) is None  # so it goes over the socket
    finally:
        st.close()
        arena.close()
