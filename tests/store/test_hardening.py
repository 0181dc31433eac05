"""Hardening (issue 13, item 6): what a careless or hostile client cannot do to the daemon and its other clients."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import lmdb
import pytest

from acre_store import DocLayout, DocMeta, DocumentNotFound, EmbeddedStore, InvalidArgument, LayoutMismatch
from acre_store._proto import store_pb2 as pb
from acre_store._proto import store_pb2_grpc
from acre_store.cli import printable
from acre_store.client import StoreClient
from acre_store.dataplane import HELLO, K_FETCH, REC
from acre_store.shared import MAX_LEASES_PER_CLIENT
from acre_store.types import MAX_META_BYTES
from acre_store.wire import meta_to_pb

from tests.helpers import free_port

from .support import REAL, ROOT, TINY, assert_doc_equal, make_doc


def test_one_daemon_per_tcp_port(daemon_factory, tmp_path):
    port = free_port()
    first = daemon_factory("lmdb", "--insecure", "--listen", f"127.0.0.1:{port}")
    second = subprocess.run(
        [sys.executable, "-m", "acre_store.cli", "store", "serve", "--data", str(tmp_path / "other"),
         "--insecure", "--listen", f"127.0.0.1:{port}"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("acre store: error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}: the address is in use" in errors[0], second.stderr
    with first.client() as c:  # the first one still serves
        doc = make_doc()
        c.put(doc.meta, doc.l1, doc.chunks)


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_owner_only_files_whatever_the_umask(daemon_factory, backend, umask):
    old = os.umask(umask)
    try:
        d = daemon_factory(backend)
    finally:
        os.umask(old)
    doc = make_doc(REAL)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(c, doc)  # chunks now in shared files
        shm = c.stats().shared["dir"]
    paths = [d.data, shm, d.addr[len("unix://"):], d.addr[len("unix://"):] + ".data"]
    for top in (d.data, shm):
        for dirpath, dirnames, filenames in os.walk(top):
            paths += [os.path.join(dirpath, n) for n in dirnames + filenames]
    assert len(paths) > 8
    loose = {p: oct(os.lstat(p).st_mode & 0o777) for p in paths if os.lstat(p).st_mode & 0o077}
    assert not loose, loose


def test_a_client_cannot_end_another_clients_leases(daemon_factory):
    doc = make_doc(REAL)
    d = daemon_factory("lmdb", "--ram-bytes", str(3 * REAL.chunk_nbytes(0)))
    with d.client() as victim, d.client(writable=True) as attacker:
        victim.put(doc.meta, doc.l1, doc.chunks)
        (_, mapped), = victim.fetch(doc.doc_id, [0])  # a read-only mapping of a shared file, under a lease
        assert not mapped.flags.writeable and victim.stats().shared["leases_active"] == 1
        stub = store_pb2_grpc.StoreStub(attacker._channel)
        for start in range(0, 20000, 1000):
            stub.Release(pb.ReleaseRequest(leases=list(range(start, start + 1000))), timeout=10)
        assert attacker.stats().shared["leases_active"] == 1
        for _ in range(3):  # churn the RAM tier: evicted chunks' files go to the pool and are reused
            for c in range(1, REAL.n_chunks):
                list(attacker.fetch(doc.doc_id, [c]))
        assert mapped.tobytes() == doc.chunks[0].tobytes()


def test_remote_clients_get_no_shared_memory_and_leases_are_bounded(daemon_factory):
    port = free_port()
    d = daemon_factory("lmdb", "--insecure", "--listen", f"127.0.0.1:{port}")
    doc = make_doc()
    with d.client() as local:
        local.put(doc.meta, doc.l1, doc.chunks)
        list(local.fetch(doc.doc_id, [0]))  # in RAM, so in a shared file
    with StoreClient(f"127.0.0.1:{port}") as remote:
        frames = list(remote._stub.Fetch(pb.FetchRequest(doc_id=doc.doc_id, chunk_ids=[0, 1], shared_ok=True),
                                         timeout=10))
        assert frames and not any(f.HasField("shared") for f in frames)
        assert_doc_equal(remote, doc)
    with d.client(data_plane=False) as local:  # one request for many chunks: at most MAX_LEASES_PER_CLIENT leases
        n = MAX_LEASES_PER_CLIENT + 100
        frames = list(local._stub.Fetch(pb.FetchRequest(doc_id=doc.doc_id, chunk_ids=[0] * n, shared_ok=True),
                                        timeout=60))
        assert len(frames) == n
        assert sum(f.HasField("shared") for f in frames) == MAX_LEASES_PER_CLIENT
        assert local.stats().shared["leases_active"] == MAX_LEASES_PER_CLIENT


def stalled_put(stub, header: pb.PutRequest, release: threading.Event):
    """A Put call that sends its header, then nothing until `release` is set (no deadline)."""
    def requests():
        yield header
        release.wait()
    return stub.Put.future(requests())


def test_a_put_header_alone_evicts_nothing(daemon_factory, backend):
    docs = [make_doc(seed=i) for i in range(3)]
    per_doc = TINY.kv_nbytes + sum(x.nbytes for x in docs[0].l1.values())
    d = daemon_factory(backend, "--disk-bytes", str(4 * per_doc))
    big = DocLayout(n_layers=4, n_kv_heads=2, head_dim=8, chunk_size=16, dtype="float32",
                    n_tokens=TINY.n_tokens * 7 // 2)  # fits only if every document goes
    meta = DocMeta(doc_id="ab" * 32, model_fingerprint="test-model", layout=big, name="big")
    with d.client() as c:
        for doc in docs:
            c.put(doc.meta, doc.l1, doc.chunks)
        release = threading.Event()
        call = stalled_put(c._stub, pb.PutRequest(header=pb.PutHeader(meta=meta_to_pb(meta))), release)
        time.sleep(1.0)
        assert {m.doc_id for m in c.list()} == {doc.doc_id for doc in docs}
        call.cancel()
        release.set()
        time.sleep(0.5)
        assert {m.doc_id for m in c.list()} == {doc.doc_id for doc in docs}
        st = c.stats()
        assert st.disk.evictions == 0 and st.disk.reserved_bytes == 0
        for doc in docs:
            assert_doc_equal(c, doc)


def test_stalled_streams_do_not_freeze_the_daemon(daemon_factory):
    d = daemon_factory("lmdb", "--workers", "16", "--stream-idle", "3")
    doc = make_doc(REAL)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
    channel = grpc.insecure_channel(d.addr)
    stub = store_pb2_grpc.StoreStub(channel)
    release = threading.Event()
    header = pb.PutRequest(header=pb.PutHeader(meta=meta_to_pb(make_doc(seed=99).meta)))
    fetches = puts = []
    try:
        # Fetch streams that never read (no deadline), and Puts that send a header only.
        fetches = [stub.Fetch(pb.FetchRequest(doc_id=doc.doc_id, chunk_ids=[0] * 300)) for _ in range(12)]
        puts = [stalled_put(stub, header, release) for _ in range(8)]
        time.sleep(1.0)
        with d.client(timeout=3, retries=0) as c:
            t0 = time.monotonic()
            assert c.info(doc.doc_id).doc_id == doc.doc_id
            assert [m.doc_id for m in c.list()] == [doc.doc_id]
            st = c.stats()
            assert time.monotonic() - t0 < 5
            assert st.streams["active"] <= st.streams["max"] < 16
        time.sleep(4.0)  # the stalled calls make no progress for 3 s: cancelled
        with d.client(timeout=3) as c:
            new = make_doc(seed=1)
            c.put(new.meta, new.l1, new.chunks)
            assert_doc_equal(c, new)
            st = c.stats().streams
            assert st["idle_cancelled"] >= 1 and st["active"] == 0
    finally:
        release.set()
        for call in fetches + puts:
            call.cancel()
        channel.close()


def test_list_pages_through_many_large_documents(daemon):
    big = "x" * (MAX_META_BYTES - 1000)
    docs = [make_doc(seed=i) for i in range(26)]  # about 6.5 MB of metadata: over the 5 MiB message limit
    with daemon.client() as c:
        for doc in docs:
            doc.meta.extra["big"] = big
            c.put(doc.meta, doc.l1, doc.chunks)
        assert sorted(m.doc_id for m in c.list()) == sorted(doc.doc_id for doc in docs)
        first = c._stub.List(pb.ListRequest(page_size=3), timeout=10)
        assert len(first.docs) == 3 and first.next_page_token
        rest = c._stub.List(pb.ListRequest(page_token=first.next_page_token), timeout=10)
        assert {m.doc_id for m in first.docs}.isdisjoint(m.doc_id for m in rest.docs)


def put_error(stub, header: pb.PutHeader, *frames: pb.PutRequest) -> grpc.StatusCode:
    try:
        stub.Put(iter([pb.PutRequest(header=header), *frames]), timeout=10)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("field,value", [("n_layers", 1 << 31), ("head_dim", (1 << 32) - 1), ("n_tokens", 1 << 60),
                                         ("chunk_size", (1 << 32) - 1)])
def test_absurd_layouts_are_invalid_arguments(daemon_factory, field, value):
    d = daemon_factory("zarr")
    meta = meta_to_pb(make_doc().meta)
    setattr(meta.layout, field, value)
    with d.client() as c:
        assert put_error(c._stub, pb.PutHeader(meta=meta),
                         pb.PutRequest(chunk=pb.ChunkFrame(chunk_id=0, data=b"x" * 1000))) == grpc.StatusCode.INVALID_ARGUMENT
        assert c.list() == []


def test_put_limits(daemon):
    doc = make_doc()
    with daemon.client() as c:
        header = pb.PutHeader(meta=meta_to_pb(doc.meta))
        too_long = pb.PutRequest(chunk=pb.ChunkFrame(chunk_id=0, data=b"\\0" * (TINY.chunk_nbytes(0) + 8)))
        assert put_error(c._stub, header, too_long) == grpc.StatusCode.INVALID_ARGUMENT
        huge_l1 = pb.PutHeader(meta=meta_to_pb(doc.meta), l1=[pb.TensorSpec(name="keys", dtype=pb.DTYPE_FLOAT32,
                                                                             shape=[1 << 20, 1 << 20])])
        assert put_error(c._stub, huge_l1) == grpc.StatusCode.INVALID_ARGUMENT
        doc.meta.extra["big"] = "x" * MAX_META_BYTES
        assert put_error(c._stub, pb.PutHeader(meta=meta_to_pb(doc.meta))) == grpc.StatusCode.INVALID_ARGUMENT
        assert c.list() == [] and c.stats().disk.reserved_bytes == 0


def damage_record(data_dir: str, backend: str, doc_id: str) -> None:
    """Truncate a committed document's record (the daemon is stopped)."""
    if backend == "zarr":
        path = os.path.join(data_dir, "zarr", "docs", doc_id, "acre.json")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        return
    env = lmdb.open(os.path.join(data_dir, "lmdb"), subdir=True, map_size=1 << 30)
    with env.begin(write=True) as txn:
        key = b"m/" + doc_id.encode()
        txn.put(key, txn.get(key)[:40])
    env.close()


def test_a_damaged_record_quarantines_one_document(daemon, backend):
    good, bad = make_doc(seed=1), make_doc(seed=2)
    with daemon.client() as c:
        for doc in (good, bad):
            c.put(doc.meta, doc.l1, doc.chunks)
    daemon.stop()
    damage_record(daemon.data, backend, bad.doc_id)
    daemon.start()  # starts, and serves the rest
    assert "set aside as damaged" in daemon.log() and bad.doc_id in daemon.log()
    with daemon.client() as c:
        assert [m.doc_id for m in c.list()] == [good.doc_id]
        assert_doc_equal(c, good)
        assert list(c.stats().quarantined) == [bad.doc_id]
        c.put(bad.meta, bad.l1, bad.chunks)  # re-ingested: its id is not blocked
        assert_doc_equal(c, bad)
        assert not c.stats().quarantined
    daemon.stop()
    damage_record(daemon.data, backend, bad.doc_id)
    daemon.start()
    with daemon.client() as c:
        assert list(c.stats().quarantined) == [bad.doc_id]
        c.delete(bad.doc_id)  # deletable
        assert not c.stats().quarantined
        with pytest.raises(DocumentNotFound):
            c.delete(bad.doc_id)
    daemon.restart()
    with daemon.client() as c:
        assert not c.stats().quarantined and [m.doc_id for m in c.list()] == [good.doc_id]


def test_concurrent_puts_of_one_id_with_different_layouts(tmp_path, backend):
    a = make_doc(TINY)
    other = DocLayout(n_layers=2, n_kv_heads=2, head_dim=8, chunk_size=16, dtype="float32", n_tokens=40)
    b = make_doc(other)
    b.meta.doc_id = a.doc_id
    with EmbeddedStore(str(tmp_path / "s"), backend=backend) as s:
        sessions = [s.store.begin_put(doc.meta, []) for doc in (a, b)]  # both start before either commits
        for sess, doc in zip(sessions, (a, b)):
            for c, chunk in enumerate(doc.chunks):
                sess.add_chunk(c, chunk)
        sessions[0].commit()
        with pytest.raises(LayoutMismatch):
            sessions[1].commit()
        (m,) = s.list()
        assert m.layout == TINY
        assert [c.tobytes() for _, c in s.fetch(a.doc_id, range(TINY.n_chunks))] == [c.tobytes() for c in a.chunks]
        assert s.stats().disk.reserved_bytes == 0


def test_names_cannot_inject_terminal_escapes(daemon):
    evil = make_doc(seed=5, name="x\x1b]0;pwned\x07\x1b[2J\u202e")
    with daemon.client() as c:
        with pytest.raises(InvalidArgument, match="control characters"):
            c.put(evil.meta, evil.l1, evil.chunks)
        assert c.list() == []
    # Names stored before the check, or listed by another server, are printed escaped by `acre store ls`.
    out = printable(evil.meta.name)
    assert out.isprintable() and out == "x\\x1b]0;pwned\\x07\\x1b[2J\\u202e"


def test_stats_reveal_no_local_paths_to_remote_clients(daemon_factory):
    port = free_port()
    d = daemon_factory("lmdb", "--insecure", "--listen", f"127.0.0.1:{port}")
    with d.client() as local:
        assert local.stats().path == os.path.abspath(d.data) and local.stats().shared["dir"]
    with StoreClient(f"127.0.0.1:{port}") as remote:
        raw = remote._stub.Stats(pb.StatsRequest(), timeout=10).json
        assert "/" not in raw, raw
        assert remote.stats().n_docs == 0


def test_rm_refuses_short_prefixes(daemon):
    docs = [make_doc(seed=i) for i in range(3)]
    with daemon.client() as c:
        for doc in docs:
            c.put(doc.meta, doc.l1, doc.chunks)
    for prefix in (docs[0].doc_id[:n] for n in (1, 2, 3)):
        r = subprocess.run([sys.executable, "-m", "acre_store.cli", "store", "rm", prefix, "--store", daemon.addr],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "too short" in r.stderr, (prefix, r.stdout, r.stderr)
    with daemon.client() as c:
        assert len(c.list()) == len(docs)


def test_leases_of_a_client_that_goes_away_end_with_it(daemon):
    doc = make_doc(REAL)
    with daemon.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, range(REAL.n_chunks)))  # in RAM: the next fetches are leased
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom acre_store.client import StoreClient\n"
         f"c = StoreClient({daemon.addr!r})\nheld = [a for _, a in c.fetch({doc.doc_id!r}, [0, 1, 2])]\n"
         "print('mapped', flush=True)\ntime.sleep(600)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        with daemon.client() as c:
            assert c.stats().shared["leases_active"] == 3
            holder.kill()
            holder.wait()
            deadline = time.monotonic() + 5
            while c.stats().shared["leases_active"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.stats().shared["leases_active"] == 0
            assert_doc_equal(c, doc)
    finally:
        holder.kill()
        holder.wait()


def test_one_remote_host_holds_at_most_half_the_streams(daemon_factory):
    port = free_port()
    d = daemon_factory("lmdb", "--insecure", "--listen", f"127.0.0.1:{port}", "--workers", "16")
    doc = make_doc(REAL)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = store_pb2_grpc.StoreStub(channel)
    try:
        stalled = [stub.Fetch(pb.FetchRequest(doc_id=doc.doc_id, chunk_ids=[0] * 300)) for _ in range(6)]
        time.sleep(1.0)
        with pytest.raises(grpc.RpcError) as e:
            next(stub.Fetch(pb.FetchRequest(doc_id=doc.doc_id, chunk_ids=[1]), timeout=5))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "127.0.0.1" in e.value.details()
        with d.client() as c:  # a local client still streams
            assert_doc_equal(c, doc)
            assert c.stats().streams["refused"] == 1
    finally:
        for call in stalled:
            call.cancel()
        channel.close()


def test_a_data_socket_client_that_stops_reading_is_dropped(daemon_factory):
    d = daemon_factory("lmdb", "--stream-idle", "2")
    doc = make_doc(REAL)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(d.addr[len("unix://"):] + ".data")
    try:
        s.sendall(HELLO)
        head = pb.FetchRequest(doc_id=doc.doc_id, chunk_ids=[0] * 100).SerializeToString()
        s.sendall(REC.pack(K_FETCH, len(head), 0) + head)  # and never read the answer
        with d.client(data_plane=False) as c:
            time.sleep(1.0)
            assert c.stats().data_plane["connections"] == 1
            deadline = time.monotonic() + 6
            while c.stats().data_plane["connections"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert c.stats().data_plane["connections"] == 0
    finally:
        s.close()
