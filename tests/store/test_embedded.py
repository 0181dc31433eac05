"""EmbeddedStore on both disk tiers: round trips, persistence, the put contract, bad input."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from acre_store import (DocLayout, DocumentNotFound, EmbeddedStore, InvalidArgument, LayoutMismatch,
                        StoreUnavailable)

from .support import REAL, TINY, assert_doc_equal, make_doc


@pytest.fixture
def store(tmp_path, backend):
    with EmbeddedStore(str(tmp_path / "store"), backend=backend) as s:
        yield s


@pytest.mark.parametrize("layout", [TINY, REAL, dataclasses.replace(TINY, dtype="bfloat16"),
                                    dataclasses.replace(TINY, dtype="float16", n_tokens=16)],
                         ids=["tiny", "real", "bf16", "fp16-one-chunk"])
def test_round_trip_byte_exact(store, layout):
    doc = make_doc(layout)
    meta = store.put(doc.meta, doc.l1, iter(doc.chunks))  # a generator, as the engine streams them
    assert meta.doc_id == doc.doc_id and meta.created > 0 and not meta.pinned
    assert meta.nbytes == layout.kv_nbytes + sum(a.nbytes for a in doc.l1.values())
    assert meta.extra == doc.meta.extra and meta.name == doc.meta.name
    assert_doc_equal(store, doc)
    assert store.info(doc.doc_id) == meta


def test_layer_ranges_and_request_order(store):
    doc = make_doc(REAL)
    store.put(doc.meta, doc.l1, doc.chunks)
    order = [5, 0, 3, 3]
    got = list(store.fetch(doc.doc_id, order, layers=(7, 19)))
    assert [c for c, _ in got] == order
    for c, arr in got:
        assert arr.shape == (12, 2, 3, REAL.chunk_len(c), 64)
        assert arr.tobytes() == doc.chunks[c][7:19].tobytes()
    (c, last), = store.fetch(doc.doc_id, [REAL.n_chunks - 1], layers=(29, 30))
    assert last.shape == (1, 2, 3, 17, 64) and np.array_equal(last, doc.chunks[-1][29:30])


def test_fetch_async_overlaps_and_returns_owned_arrays(store):
    doc = make_doc(TINY)
    store.put(doc.meta, doc.l1, doc.chunks)
    handle = store.fetch_async(doc.doc_id, [6, 2, 4])
    assert [c for c, _ in handle] == [6, 2, 4]
    res = store.fetch_async(doc.doc_id, range(7), layers=(1, 3)).result()
    assert all(np.array_equal(res[c], doc.chunks[c][1:3]) for c in range(7))
    res[0][...] = 0  # the caller owns what it gets: the cache is untouched
    (_, again), = store.fetch(doc.doc_id, [0], layers=(1, 3))
    assert np.array_equal(again, doc.chunks[0][1:3])


def test_persists_across_reopen_and_lists(tmp_path, backend):
    docs = [make_doc(TINY, seed=i) for i in range(3)]
    with EmbeddedStore(str(tmp_path / "s"), backend=backend) as s:
        for d in docs:
            s.put(d.meta, d.l1, d.chunks)
        s.pin(docs[1].doc_id)
        s.delete(docs[2].doc_id)
        used = s.stats().disk.used_bytes
    with EmbeddedStore(str(tmp_path / "s")) as s:  # backend read from the directory
        assert [m.doc_id for m in s.list()] == [docs[0].doc_id, docs[1].doc_id]
        assert s.info(docs[1].doc_id).pinned
        assert s.stats().disk.used_bytes == used == docs[0].meta.layout.kv_nbytes * 2 + 2 * sum(
            a.nbytes for a in docs[0].l1.values())
        for d in docs[:2]:
            assert_doc_equal(s, d)
        with pytest.raises(DocumentNotFound):
            s.info(docs[2].doc_id)


def test_reput_is_a_noop_and_mismatch_is_refused(store):
    doc = make_doc(TINY)
    first = store.put(doc.meta, doc.l1, doc.chunks)
    again = store.put(doc.meta, doc.l1, iter(()))  # chunks are not even read
    assert again == first
    assert store.stats().ops.put_noops == 1 and store.stats().ops.puts == 1
    other = dataclasses.replace(doc.meta, layout=dataclasses.replace(TINY, n_tokens=99))
    with pytest.raises(LayoutMismatch):
        store.put(other, doc.l1, [])
    with pytest.raises(LayoutMismatch):
        store.put(dataclasses.replace(doc.meta, model_fingerprint="another-model"), doc.l1, [])


def bad_puts():
    doc = make_doc(TINY)
    L = TINY
    wrong_shape = list(doc.chunks)
    wrong_shape[2] = wrong_shape[2][:, :, :, :5]
    wrong_dtype = [c.astype(np.float16) for c in doc.chunks]
    return {
        "too-few-chunks": (doc.meta, doc.l1, doc.chunks[:-1]),
        "too-many-chunks": (doc.meta, doc.l1, doc.chunks + [doc.chunks[0]]),
        "chunk-shape": (doc.meta, doc.l1, wrong_shape),
        "chunk-dtype": (doc.meta, doc.l1, wrong_dtype),
        "not-an-array": (doc.meta, doc.l1, [c.tolist() for c in doc.chunks]),
        "bad-doc-id": (dataclasses.replace(doc.meta, doc_id="XYZ"), doc.l1, doc.chunks),
        "short-doc-id": (dataclasses.replace(doc.meta, doc_id="abc123"), doc.l1, doc.chunks),
        "no-fingerprint": (dataclasses.replace(doc.meta, model_fingerprint=""), doc.l1, doc.chunks),
        "format-version": (dataclasses.replace(doc.meta, format_version=99), doc.l1, doc.chunks),
        "l1-dtype": (doc.meta, {**doc.l1, "bad": np.zeros(3, np.complex64)}, doc.chunks),
        "l1-name": (doc.meta, {**doc.l1, "../etc": np.zeros(3, np.int8)}, doc.chunks),
        "generator-raises": (doc.meta, doc.l1, (c if i < 3 else 1 / 0 for i, c in enumerate(doc.chunks))),
    }, L


@pytest.mark.parametrize("case", list(bad_puts()[0]))
def test_bad_put_leaves_nothing(store, case):
    meta, l1, chunks = bad_puts()[0][case]
    with pytest.raises((InvalidArgument, ZeroDivisionError)):
        store.put(meta, l1, chunks)
    assert store.list() == []
    st = store.stats()
    assert st.disk.used_bytes == 0 and st.disk.reserved_bytes == 0


def test_layout_validation():
    with pytest.raises(InvalidArgument):
        DocLayout(4, 2, 8, 16, "int8", 100)
    with pytest.raises(InvalidArgument):
        DocLayout(0, 2, 8, 16, "float32", 100)
    L = DocLayout(4, 2, 8, 16, "bfloat16", 33)
    assert L.n_chunks == 3 and L.chunk_shape(2) == (4, 2, 2, 1, 8) and L.np_dtype == np.uint16


def test_bad_reads(store):
    doc = make_doc(TINY)
    store.put(doc.meta, doc.l1, doc.chunks)
    with pytest.raises(DocumentNotFound):
        store.info("0" * 32)
    with pytest.raises(DocumentNotFound):
        store.fetch("0" * 32, [0])
    with pytest.raises(InvalidArgument):
        store.fetch(doc.doc_id, [7])
    with pytest.raises(InvalidArgument):
        store.fetch(doc.doc_id, [-1])
    for layers in [(0, 5), (2, 2), (3, 1), (-1, 2)]:
        with pytest.raises(InvalidArgument):
            store.fetch(doc.doc_id, [0], layers=layers)
    with pytest.raises(DocumentNotFound):
        store.delete("0" * 32)
    with pytest.raises(DocumentNotFound):
        store.pin("0" * 32)
    with pytest.raises(InvalidArgument):
        store.info("not hex")


def test_one_process_owns_the_data(tmp_path, backend):
    with EmbeddedStore(str(tmp_path / "s"), backend=backend):
        with pytest.raises(StoreUnavailable, match="in use by another process"):
            EmbeddedStore(str(tmp_path / "s"))
    with EmbeddedStore(str(tmp_path / "s")):  # released on close
        pass


def test_backend_of_a_directory_is_fixed(tmp_path):
    EmbeddedStore(str(tmp_path / "s"), backend="zarr").close()
    with pytest.raises(InvalidArgument, match="zarr"):
        EmbeddedStore(str(tmp_path / "s"), backend="lmdb")


def test_prefetch_promotes_to_ram(store):
    doc = make_doc(TINY)
    store.put(doc.meta, doc.l1, doc.chunks)
    store.prefetch(doc.doc_id, [1, 2])
    store.prefetch(doc.doc_id)
    store.wait_idle()  # wait for the background promotion
    before = store.stats().ram
    assert before.entries == TINY.n_chunks
    list(store.fetch(doc.doc_id, range(TINY.n_chunks)))
    after = store.stats().ram
    assert after.hits - before.hits == TINY.n_chunks and after.misses == before.misses
    with pytest.raises(InvalidArgument):
        store.prefetch(doc.doc_id, [99])


def test_lmdb_map_grows(tmp_path):
    doc = make_doc(REAL)  # ~7 MiB into a 1 MiB map
    with EmbeddedStore(str(tmp_path / "s"), backend="lmdb", lmdb_map_size=1 << 20) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(s, doc)


def test_readahead_hint_is_harmless(tmp_path, backend):
    """`will_need` (issued for the missing chunks of a multi-chunk fetch) touches nothing it should not:
    chunks come back byte-exact, and an unknown chunk id in the hint is ignored."""
    from acre_store.store import Store, StoreConfig

    doc = make_doc(TINY)
    with EmbeddedStore(str(tmp_path), backend=backend, ram_bytes=0) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
    st = Store(StoreConfig(path=str(tmp_path), ram_bytes=1 << 20))
    try:
        rec = st.record(doc.doc_id)
        st.disk.will_need(rec, [0, 2, TINY.n_chunks + 5])
        got = dict(st.fetch(doc.doc_id, range(TINY.n_chunks)))
        assert all(got[c].tobytes() == doc.chunks[c].tobytes() for c in range(TINY.n_chunks))
        assert st.counters.disk_reads == TINY.n_chunks
    finally:
        st.close()


def test_read_into_fills_layer_by_layer(tmp_path, backend):
    """`DiskTier.read_into` (how a cold chunk is read into its RAM home) writes the stored bytes into the
    caller's buffer and reports each layer, in order, once its bytes are there; the short last chunk
    (stored padded by Zarr) too; a buffer of the wrong size is a ValueError, not a partial read."""
    from acre_store.store import Store, StoreConfig

    doc = make_doc(TINY)
    with EmbeddedStore(str(tmp_path), backend=backend, ram_bytes=0) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
    st = Store(StoreConfig(path=str(tmp_path), ram_bytes=0))
    try:
        rec = st.record(doc.doc_id)
        assert TINY.chunk_len(TINY.n_chunks - 1) < TINY.chunk_size  # the layout has a short last chunk
        for c in (0, TINY.n_chunks - 1):
            want = doc.chunks[c].reshape(-1).view(np.uint8)
            out = np.zeros(want.size, np.uint8)
            step = want.size // TINY.n_layers
            seen = []

            def on_layer(i):  # layer i has landed; later layers have not
                assert out[i * step:(i + 1) * step].tobytes() == want[i * step:(i + 1) * step].tobytes()
                assert not out[(i + 1) * step:].any()
                seen.append(i)

            st.disk.read_into(rec, c, memoryview(out), on_layer)
            assert seen == list(range(TINY.n_layers)) and out.tobytes() == want.tobytes()
        with pytest.raises(ValueError):
            st.disk.read_into(rec, 0, memoryview(np.zeros(want.size + 8, np.uint8)), lambda i: None)
    finally:
        st.close()
