"""The fast-path client's mapping cache (map_cache.py): reuse, leases per call, pooled files, bounds."""
from __future__ import annotations

import gc
import mmap
import os
import threading
import warnings

import numpy as np
import pytest

from acre_store import map_cache
from acre_store._proto import store_pb2 as pb
from acre_store.map_cache import MapCache

from .support import REAL, make_doc

CHUNK = REAL.chunk_nbytes(0)  # chunks 0..4 of REAL have this size; chunk 5 is shorter


@pytest.fixture
def mmap_calls(monkeypatch) -> list:
    """Every mmap.mmap made in this process from now on (the client's mappings)."""
    calls, real = [], mmap.mmap

    def counting(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(map_cache.mmap, "mmap", counting)
    return calls


def _leases(c) -> int:
    return c.stats().shared["leases_active"]


def test_the_same_chunk_reuses_its_mapping(daemon, mmap_calls):
    doc = make_doc(REAL)
    with daemon.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        for _ in range(3):
            for cid, arr in c.fetch(doc.doc_id, [1, 4]):
                assert arr.tobytes() == doc.chunks[cid].tobytes() and not arr.flags.writeable
        (_, part), = c.fetch(doc.doc_id, [4], layers=(3, 7))  # a layer range of a mapped file: no new mapping
        assert part.tobytes() == doc.chunks[4][3:7].tobytes()
        assert len(mmap_calls) == 2
        st = c._maps.stats()
        assert st["files"] == 2 and st["misses"] == 2 and st["hits"] == 5
    with daemon.client(writable=True) as c:  # copies come out of the mapping too
        for _ in range(2):
            (_, arr), = c.fetch(doc.doc_id, [1])
            assert arr.tobytes() == doc.chunks[1].tobytes() and arr.flags.writeable
        assert len(mmap_calls) == 3


def test_a_lease_lasts_while_any_array_of_its_call_lives(daemon):
    torch = pytest.importorskip("torch")
    doc = make_doc(REAL)
    with daemon.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, [2]))  # mapped now: the calls below are cache hits
        (_, arr), = c.fetch(doc.doc_id, [2])
        view = arr[3:5]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch warns about read-only memory
            t = torch.from_numpy(arr[1])
        del arr
        gc.collect()
        list(c.fetch(doc.doc_id, [0]))  # releases what is done with: not chunk 2's lease
        assert _leases(c) == 2  # chunk 2's (its views live) and chunk 0's (ends with the next call)
        del view
        gc.collect()
        list(c.fetch(doc.doc_id, [0]))
        assert _leases(c) == 2  # the tensor still holds it
        assert t.numpy().tobytes() == doc.chunks[2][1].tobytes()
        del t
        gc.collect()
        list(c.fetch(doc.doc_id, [0]))
        assert _leases(c) == 1  # only the last call's
        assert c._maps.stats()["files"] == 2  # the mappings stay, leased or not


def test_a_pooled_file_reused_for_another_chunk_shows_the_new_bytes(daemon_factory, mmap_calls):
    # Room for two chunks: each new chunk evicts the oldest, whose file goes to the pool (its lease ended)
    # and is rewritten for the chunk after next, under a new name.
    d = daemon_factory("lmdb", "--ram-bytes", str(2 * CHUNK))
    doc = make_doc(REAL)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        for cid in range(5):
            (_, arr), = c.fetch(doc.doc_id, [cid])
            assert arr.tobytes() == doc.chunks[cid].tobytes()
            del arr  # its lease ends with the next call
        st = c.stats().shared
        assert st["reused"] >= 2, st
        # Chunks 3 and 4 landed in the files of chunks 0 and 1: the client saw them through the mappings it
        # had (no new mapping), with the new bytes.
        assert len(mmap_calls) == 3
        assert c._maps.stats()["hits"] == 2
        # And back: chunk 0 again (evicted, read from disk into a pooled file) is chunk 0's bytes.
        for cid in (0, 1, 2, 0):
            (_, arr), = c.fetch(doc.doc_id, [cid])
            assert arr.tobytes() == doc.chunks[cid].tobytes()
            del arr


def test_a_live_array_keeps_its_file_from_being_rewritten(daemon_factory):
    d = daemon_factory("lmdb", "--ram-bytes", str(2 * CHUNK))
    doc = make_doc(REAL)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        (_, kept), = c.fetch(doc.doc_id, [0])
        for cid in range(1, 5):  # chunk 0 stays leased: its file is not handed to another chunk
            (_, arr), = c.fetch(doc.doc_id, [cid])
            assert arr.tobytes() == doc.chunks[cid].tobytes()
            del arr
            assert kept.tobytes() == doc.chunks[0].tobytes()


def test_the_cache_is_bounded_and_forgets_unlinked_files(daemon):
    doc = make_doc(REAL)
    with daemon.client(map_cache_files=2) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        (_, old), = c.fetch(doc.doc_id, [0])
        for cid in range(1, 5):
            (_, arr), = c.fetch(doc.doc_id, [cid])
            assert arr.tobytes() == doc.chunks[cid].tobytes()
        st = c._maps.stats()
        assert st["files"] == 2 and st["bytes"] == 2 * CHUNK and st["evictions"] == 3
        assert old.tobytes() == doc.chunks[0].tobytes()  # evicted from the cache: its array still reads
    with daemon.client(map_cache_bytes=CHUNK + CHUNK // 2) as c:
        for cid in range(5):
            (_, arr), = c.fetch(doc.doc_id, [cid])
            assert arr.tobytes() == doc.chunks[cid].tobytes()
        assert c._maps.stats()["files"] == 1
        with daemon.client() as other:
            other.delete(doc.doc_id)  # the daemon unlinks the files
        assert c._maps.stats()["files"] == 1
        c.release_leases()  # ... and the client forgets its mappings of them
        assert c._maps.stats()["files"] == 0
        assert arr.tobytes() == doc.chunks[4].tobytes()  # the array still reads
    with daemon.client(map_cache_bytes=0) as c:  # nothing kept: every call maps and unmaps
        c.put(doc.meta, doc.l1, doc.chunks)
        for cid in (1, 1):
            (_, arr), = c.fetch(doc.doc_id, [cid])
            assert arr.tobytes() == doc.chunks[cid].tobytes()
        assert c._maps.stats() == {"files": 0, "bytes": 0, "hits": 0, "misses": 2, "evictions": 0}


def test_concurrent_fetches_through_a_small_cache(daemon):
    doc = make_doc(REAL)
    errors = []
    with daemon.client(map_cache_files=2) as c:
        c.put(doc.meta, doc.l1, doc.chunks)

        def work(k):
            try:
                for i in range(20):
                    cid = (k + i) % REAL.n_chunks
                    for got, arr in c.fetch(doc.doc_id, [cid]):
                        assert got == cid and arr.tobytes() == doc.chunks[cid].tobytes()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert c._maps.stats()["files"] <= 2


def test_a_file_that_changed_size_is_mapped_again(tmp_path, mmap_calls):
    path = str(tmp_path / "f")
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 16)
    cache, ended = MapCache(), []
    ref = pb.SharedRef(path=path, offset=256, length=512, lease=1)
    arr = cache.view(ref, np.uint8, (512,), lambda: ended.append(1))
    assert arr.tobytes() == (bytes(range(256)) * 2)
    del arr
    gc.collect()
    assert ended == [1]
    with open(path, "r+b") as f:  # the same inode, longer, other bytes
        f.write(b"\x07" * 8192)
    ref = pb.SharedRef(path=path, offset=6000, length=1000, lease=2)
    assert cache.view(ref, np.uint8, (1000,), lambda: None).tobytes() == b"\x07" * 1000
    assert len(mmap_calls) == 2 and cache.stats()["files"] == 1 and cache.stats()["bytes"] == 8192
    os.unlink(path)
    cache.drop_unlinked()
    assert cache.stats()["files"] == 0
    cache.close()
