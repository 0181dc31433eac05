"""The shared object-store tier: real daemons on one bucket of a real S3-compatible server (moto).

Publish order (no manifest, nothing visible), read-through on a daemon that never saw the document,
kill -9 of the daemon that ingested, a killed put, a corrupted object, delete everywhere.
"""
from __future__ import annotations

import json
import threading
import time

import pytest

from acre_store import DataLoss, DocumentNotFound, StoreUnavailable
from acre_store.tiers.object_tier import ObjectStoreConfig, ObjectTier

from .s3_server import local_docs
from .support import REAL, TINY, assert_doc_equal, make_doc


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_path):
    from tests.model.tiny import make_tiny_folder

    return make_tiny_folder(tmp_path_factory.mktemp("obj") / "model", default_model_path, seed=21)


def test_put_on_a_read_on_b_kill_a_restart_b_empty(on_bucket, bucket, backend, tmp_path):
    doc = make_doc(REAL, seed=3)
    a, b = on_bucket(backend=backend), on_bucket(backend=backend)
    with a.client() as ca:
        meta = ca.put(doc.meta, doc.l1, iter(doc.chunks))
    names = [k.rsplit("/", 1)[1] for k in bucket.keys(f"docs/{doc.doc_id}/")]
    assert names == ["l1.bin", "manifest.json", "shard-00000.bin"]
    with b.client() as cb:
        assert cb.stats().n_docs == 0  # not local yet
        assert [m.doc_id for m in cb.list()] == [doc.doc_id]  # but listed from the bucket
        assert cb.info(doc.doc_id) == meta  # read through
        assert local_docs(cb, 1) == 1
        assert_doc_equal(cb, doc)
        o = cb.stats().object_store
        assert o["url"] == bucket.url and o["read_throughs"] == 1 and o["gets"] >= 3 and o["errors"] == 0
    a.kill9()
    with b.client() as cb:
        assert_doc_equal(cb, doc)
    b.stop()
    fresh = on_bucket(backend=backend, data=str(tmp_path / "empty"))
    with fresh.client() as cf:
        assert cf.stats().n_docs == 0
        assert_doc_equal(cf, doc)
        cf.pin(doc.doc_id)  # waits for the landing copy
        assert cf.stats().n_docs == 1 and cf.info(doc.doc_id).pinned


def test_engine_answers_the_same_through_a_and_b(on_bucket, tiny_folder):
    from acre_model.engine import Engine

    from tests.model.tiny import DOC

    a, b = on_bucket(), on_bucket()
    eng_a = Engine.from_pretrained(str(tiny_folder), device="cpu")
    info = eng_a.ingest(DOC, store=a.addr)
    q = "What colour is the sky?"
    ans_a = eng_a.ask(info.doc_id, q, store=a.addr, max_new_tokens=6)
    eng_b = Engine.from_pretrained(str(tiny_folder), device="cpu")
    ans_b = eng_b.ask(info.doc_id, q, store=b.addr, max_new_tokens=6)
    assert ans_b.answer == ans_a.answer and ans_b.refilled_chunks == ans_a.refilled_chunks
    a.kill9()
    eng_c = Engine.from_pretrained(str(tiny_folder), device="cpu")
    both = f"{a.addr},{b.addr}"  # A is down: routed to B whatever the hash says
    assert eng_c.ask(info.doc_id, q, store=both, max_new_tokens=6).answer == ans_a.answer
    for e in (eng_a, eng_b, eng_c):
        e.close()


def _chunks_then_stall(doc, sent: threading.Event):
    for i, ch in enumerate(doc.chunks):
        if i == len(doc.chunks) - 1:
            sent.set()
            time.sleep(60)  # the daemon is killed meanwhile
        yield ch


def test_killed_put_publishes_nothing_and_a_retry_completes(on_bucket, bucket):
    doc = make_doc(REAL, seed=4)
    # one chunk per shard: every chunk but the last reaches the bucket before the daemon dies
    a = on_bucket("--object-shard-bytes", "1")
    b = on_bucket()
    sent = threading.Event()
    errors = []

    def put():
        try:
            with a.client(stream_timeout=60) as ca:
                ca.put(doc.meta, doc.l1, _chunks_then_stall(doc, sent))
        except StoreUnavailable as e:
            errors.append(e)
    t = threading.Thread(target=put, daemon=True)
    t.start()
    assert sent.wait(30)
    deadline = time.monotonic() + 30
    while len([k for k in bucket.keys(f"docs/{doc.doc_id}/") if "shard-" in k]) < REAL.n_chunks - 1:
        assert time.monotonic() < deadline, bucket.keys()
        time.sleep(0.05)
    a.kill9()
    t.join(30)
    assert errors and not t.is_alive()
    keys = bucket.keys(f"docs/{doc.doc_id}/")
    assert keys and not any(k.endswith("manifest.json") for k in keys)
    with b.client() as cb:
        with pytest.raises(DocumentNotFound):
            cb.info(doc.doc_id)
        assert cb.list() == []
    a.start()
    with a.client() as ca:
        with pytest.raises(DocumentNotFound):
            ca.info(doc.doc_id)
        ca.put(doc.meta, doc.l1, doc.chunks)
    with b.client() as cb:
        assert_doc_equal(cb, doc)


@pytest.mark.parametrize("target", ["shard-00001.bin", "l1.bin"])
def test_corrupted_object_is_data_loss(on_bucket, bucket, target):
    doc = make_doc(REAL, seed=5)
    a = on_bucket("--object-shard-bytes", "1")
    with a.client() as ca:
        ca.put(doc.meta, doc.l1, doc.chunks)
    key = f"docs/{doc.doc_id}/{target}"
    data = bytearray(bucket.get(key))
    data[len(data) // 2] ^= 0x40
    bucket.put(key, bytes(data))
    b = on_bucket()
    with b.client() as cb:
        if target == "l1.bin":  # the first thing a read-through needs
            with pytest.raises(DataLoss, match="checksum"):
                cb.info(doc.doc_id)
            with pytest.raises(DataLoss):
                cb.get_l1(doc.doc_id)
        else:  # L1 is served at once; the damaged chunks are refused, whoever reads them first
            assert cb.info(doc.doc_id).doc_id == doc.doc_id
            with pytest.raises(DataLoss, match="checksum"):  # shard 1 holds chunk 1 (one chunk per shard)
                list(cb.fetch(doc.doc_id, [1]))
            _wait_landed(cb)
        with pytest.raises(DataLoss):
            list(cb.fetch(doc.doc_id, range(REAL.n_chunks)))
        st = cb.stats()
        assert st.n_docs == 0 and st.disk.checksum_failures >= 1  # nothing half-kept
    with a.client() as ca:  # A's own verified copy is untouched
        assert_doc_equal(ca, doc)


def test_missing_object_is_data_loss(on_bucket, bucket):
    doc = make_doc(TINY, seed=6)
    a = on_bucket()
    with a.client() as ca:
        ca.put(doc.meta, doc.l1, doc.chunks)
    bucket.server.client().delete_object(Bucket=bucket.name, Key=f"{bucket.prefix}/docs/{doc.doc_id}/shard-00000.bin")
    b = on_bucket()
    with b.client() as cb:
        cb.info(doc.doc_id)  # manifest and L1 are there
        with pytest.raises(DataLoss, match="missing"):
            list(cb.fetch(doc.doc_id, [0]))
        _wait_landed(cb)
        assert cb.stats().n_docs == 0


def _wait_landed(client, timeout: float = 30) -> None:
    """Until no document is landing (read through, downloading in the background) on the client's daemon."""
    deadline = time.monotonic() + timeout
    while client.stats().object_store["landing"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.stats().object_store["landing"] == 0


def test_delete_removes_the_document_from_bucket_and_local_tiers(on_bucket, bucket):
    doc, other = make_doc(TINY, seed=7), make_doc(TINY, seed=8)
    a, b = on_bucket(), on_bucket()
    with a.client() as ca, b.client() as cb:
        ca.put(doc.meta, doc.l1, doc.chunks)
        ca.put(other.meta, other.l1, other.chunks)
        assert_doc_equal(cb, doc)
        cb.delete(doc.doc_id)  # B holds a copy; A holds the original
        assert bucket.keys(f"docs/{doc.doc_id}/") == []
        assert [m.doc_id for m in cb.list()] == [other.doc_id]
        assert cb.stats().n_docs == 0
        with pytest.raises(DocumentNotFound):
            cb.info(doc.doc_id)
        with pytest.raises(DocumentNotFound):
            cb.delete(doc.doc_id)
    with a.client() as ca:  # A's copy goes through a client of A, or of every daemon (MultiStoreClient)
        ca.delete(doc.doc_id)
        assert [m.doc_id for m in ca.list()] == [other.doc_id] and ca.stats().n_docs == 1


def test_disk_cap_evicts_what_the_bucket_keeps(on_bucket):
    docs = [make_doc(REAL, seed=10 + i) for i in range(3)]
    cap = docs[0].meta.layout.kv_nbytes * 2  # room for about one document and a half with L1
    a = on_bucket("--disk-bytes", str(cap))
    with a.client() as ca:
        for d in docs:
            ca.put(d.meta, d.l1, d.chunks)
        assert ca.stats().disk.evictions >= 2
        for d in docs:  # evicted ones come back from the bucket
            assert_doc_equal(ca, d)


def test_a_document_is_read_in_few_ranged_requests(s3_server, bucket):
    doc = make_doc(REAL, seed=9)
    chunk = REAL.chunk_nbytes(0)
    tier = ObjectTier(ObjectStoreConfig(bucket.url, endpoint=s3_server.endpoint, shard_bytes=3 * chunk,
                                        range_bytes=2 * chunk))
    try:
        from acre_store.checksum import crc32c, layer_crcs
        from acre_store.record import DocRecord, TensorSpec

        class Null:
            def write_l1(self, spec, arr): pass
            def write_chunk(self, c, chunk): pass
            def commit(self, record): pass
            def abort(self): pass

        specs = [TensorSpec.of(k, v) for k, v in doc.l1.items()]
        st = tier.publishing(Null(), doc.meta, specs)
        for s in specs:
            st.write_l1(s, doc.l1[s.name])
        for c, ch in enumerate(doc.chunks):
            st.write_chunk(c, ch)
        meta = doc.meta.__class__(**{**doc.meta.__dict__, "nbytes": 1, "created": 1.0})
        st.publish(DocRecord(meta, [TensorSpec(s.name, s.dtype, s.shape, crc32c(doc.l1[s.name])) for s in specs],
                             [layer_crcs(ch) for ch in doc.chunks]))
        man = tier.manifest(doc.doc_id)
        assert man.shard_starts == [0, 3]
        assert json.loads(bucket.get(f"docs/{doc.doc_id}/manifest.json"))["shard_starts"] == [0, 3]
        got, before = {}, dict(tier.counters)
        tier.download(man, lambda s, a: None, lambda c, a: got.__setitem__(c, a.tobytes()))
        assert [got[c] for c in range(REAL.n_chunks)] == [ch.tobytes() for ch in doc.chunks]
        # 6 chunks in shards of 3, ranges of 2 chunks: 2 + 2 chunk ranges and one L1 read
        assert tier.counters["gets"] - before["gets"] == 5
    finally:
        tier.close()


def test_unreachable_bucket_fails_the_put_and_keeps_nothing(tmp_path, monkeypatch):
    from acre_store import EmbeddedStore
    from acre_store.tiers.object_tier import ObjectStoreConfig

    from .s3_server import CREDENTIALS

    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    doc = make_doc(TINY, seed=11)
    cfg = ObjectStoreConfig("s3://acre-nowhere/kv", endpoint="http://127.0.0.1:9")  # nothing listens on port 9
    with EmbeddedStore(str(tmp_path / "s"), object_store=cfg) as s:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="object store s3://acre-nowhere/kv"):
            s.put(doc.meta, doc.l1, doc.chunks)
        with pytest.raises(StoreUnavailable):
            s.info(doc.doc_id)
        assert s.stats().n_docs == 0 and time.monotonic() - t0 < 30


def test_a_new_host_answers_before_the_whole_document_is_down(on_bucket, daemon_factory, tmp_path):
    from acre_store.types import DocLayout

    big = DocLayout(n_layers=30, n_kv_heads=3, head_dim=64, chunk_size=64, dtype="float32", n_tokens=64 * 40)
    doc = make_doc(big, seed=12)
    chunk, total = big.chunk_nbytes(0), big.kv_nbytes
    a = on_bucket("--object-shard-bytes", str(8 * chunk))
    with a.client() as ca:
        meta = ca.put(doc.meta, doc.l1, doc.chunks)
    data = str(tmp_path / "new-host")
    # one GET at a time for the background download: it has read little by the time the answer is back
    b = on_bucket("--object-parallel", "1", data=data)
    with b.client() as cb:
        assert cb.info(meta.doc_id) == meta  # manifest and L1 only
        got = dict(cb.fetch(meta.doc_id, [37, 2]))  # chunk 2 is the download's own; 37 is read ahead of it
        o = cb.stats().object_store
        assert got[37].tobytes() == doc.chunks[37].tobytes() and got[2].tobytes() == doc.chunks[2].tobytes()
        assert o["ahead_gets"] >= 1 and o["read_throughs"] == 1
        assert o["get_bytes"] < total // 2, (o, total)  # the answer came long before the whole document
        l1 = cb.get_l1(meta.doc_id)
        assert all(l1[k].tobytes() == v.tobytes() for k, v in doc.l1.items())
        assert local_docs(cb, 1, timeout=60) == 1  # then it lands fully, in the background
        o = cb.stats().object_store
        assert o["landing"] == 0 and o["get_bytes"] <= total + sum(v.nbytes for v in doc.l1.values()) + 2 * chunk + (1 << 20)
        assert_doc_equal(cb, doc)
    b.stop()
    local = daemon_factory("lmdb", data=data)  # no bucket: the local copy
    with local.client() as cl:
        assert cl.stats().n_docs == 1 and cl.stats().object_store is None
        assert_doc_equal(cl, doc)


def test_the_download_waits_while_the_document_is_being_read(on_bucket, tmp_path):
    """`--object-land-quiet`: the first questions on a new host have it to themselves; the rest of the
    document comes down once no request has read it for that long."""
    from acre_store.types import DocLayout

    big = DocLayout(n_layers=30, n_kv_heads=3, head_dim=64, chunk_size=64, dtype="float32", n_tokens=64 * 16)
    doc = make_doc(big, seed=16)
    a = on_bucket()
    with a.client() as ca:
        meta = ca.put(doc.meta, doc.l1, doc.chunks)
    b = on_bucket("--object-land-quiet", "1.5", data=str(tmp_path / "quiet"))
    with b.client() as cb:
        assert cb.info(meta.doc_id) == meta
        before = cb.stats().object_store["get_bytes"]  # manifest and L1
        t_end = time.monotonic() + 3.0  # twice the quiet spell, with a read every 0.2 s
        while time.monotonic() < t_end:
            assert dict(cb.fetch(meta.doc_id, [5]))[5].tobytes() == doc.chunks[5].tobytes()
            time.sleep(0.2)
        o = cb.stats().object_store
        assert o["landing"] == 1 and o["get_bytes"] <= before + 2 * big.chunk_nbytes(0), (o, before)
        t0 = time.monotonic()
        assert local_docs(cb, 1, timeout=60) == 1  # reads stopped: it lands
        assert time.monotonic() - t0 >= 1.0
        assert_doc_equal(cb, doc)


def test_a_delete_while_landing_stops_the_download(on_bucket, tmp_path):
    from acre_store.types import DocLayout

    big = DocLayout(n_layers=30, n_kv_heads=3, head_dim=64, chunk_size=64, dtype="float32", n_tokens=64 * 24)
    doc = make_doc(big, seed=13)
    a = on_bucket()
    with a.client() as ca:
        ca.put(doc.meta, doc.l1, doc.chunks)
    b = on_bucket("--object-parallel", "1")
    with b.client() as cb:
        cb.info(doc.doc_id)
        cb.delete(doc.doc_id)  # landing here, published there: gone from both
        _wait_landed(cb)
        st = cb.stats()
        assert st.n_docs == 0 and st.ram.entries == 0
        with pytest.raises(DocumentNotFound):
            cb.info(doc.doc_id)


def test_a_delete_through_one_daemon_reaches_the_others_copies(on_bucket, bucket):
    doc, other = make_doc(TINY, seed=14), make_doc(TINY, seed=15)
    a = on_bucket()
    b = on_bucket("--object-recheck", "0.5")
    c = on_bucket("--object-recheck", "3600")  # a long interval: its copy outlives the delete that long
    with a.client() as ca, b.client() as cb, c.client() as cc:
        ca.put(doc.meta, doc.l1, doc.chunks)
        ca.put(other.meta, other.l1, other.chunks)
        for cl in (cb, cc):
            assert_doc_equal(cl, doc)
            assert_doc_equal(cl, other)
            assert local_docs(cl, 2) == 2
        for _ in range(5):  # reads within the interval look at the bucket at most once per document
            assert_doc_equal(cc, doc)
            cc.info(doc.doc_id)
        assert cc.stats().object_store["heads"] == 0  # the read-through's manifest GET was the look
        ca.delete(doc.doc_id)
        t0 = time.monotonic()
        assert bucket.keys(f"docs/{doc.doc_id}/") == []
        time.sleep(max(0.0, 0.6 - (time.monotonic() - t0)))
        with pytest.raises(DocumentNotFound, match="deleted"):
            cb.info(doc.doc_id)
        with pytest.raises(DocumentNotFound):
            list(cb.fetch(doc.doc_id, [0]))
        st = cb.stats()
        assert st.n_docs == 1 and st.object_store["dropped_deleted"] == 1
        assert_doc_equal(cb, other)  # still published: served, its look at the bucket found it
        assert_doc_equal(cc, doc)  # bounded staleness: within C's interval its copy is still served
    c.stop()
    c2 = on_bucket("--object-recheck", "0", data=c.data)  # the same folder, every read looks
    with c2.client() as cc:
        assert cc.stats().n_docs == 2
        with pytest.raises(DocumentNotFound):
            list(cc.fetch(doc.doc_id, [0]))
        assert cc.stats().n_docs == 1
        assert_doc_equal(cc, other)
        assert cc.stats().object_store["heads"] >= 2
