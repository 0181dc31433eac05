"""Same-host data plane: Fetch over the plain socket beside the daemon's unix socket (dataplane.py)."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from acre_store import DataLoss, DocumentNotFound, InvalidArgument
from acre_store.dataplane import HELLO, K_END, K_ERROR, K_FETCH, K_FRAME, REC, data_path, unix_path
from acre_store._proto import store_pb2 as pb

from .support import REAL, TINY, assert_doc_equal, make_doc
from .test_integrity import daemon_with_damaged_chunk


def plane_stats(client) -> dict:
    return client.stats().data_plane or {}


def test_fetch_goes_over_the_data_plane_byte_exact(daemon):
    doc = make_doc(REAL)
    with daemon.client(shared=False) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        before = plane_stats(c)
        assert before["calls"] == 0 and before["paths"] == [data_path(unix_path(daemon.addr))]
        assert_doc_equal(c, doc)  # disk-cold, then
        got = dict(c.fetch(doc.doc_id, [4, 0, 5], layers=(3, 17)))  # RAM-hot, a layer range, any order
        for cid, arr in got.items():
            assert arr.tobytes() == doc.chunks[cid][3:17].tobytes() and not arr.flags.writeable
        after = plane_stats(c)
        assert after["calls"] == 2 and after["chunks"] == REAL.n_chunks + 3
        assert after["bytes"] == sum(ch.nbytes for ch in doc.chunks) + sum(doc.chunks[i][3:17].nbytes for i in (4, 0, 5))
    with daemon.client(shared=False, writable=True) as c:
        for cid, arr in c.fetch(doc.doc_id, [1]):
            assert arr.flags.writeable and arr.tobytes() == doc.chunks[1].tobytes()
            arr[...] = 0  # the caller's own array
        assert_doc_equal(c, doc)


@pytest.mark.parametrize("plane", [True, False], ids=["data-plane", "grpc"])
def test_errors_come_back_as_the_same_exceptions(daemon, plane):
    doc = make_doc(TINY)
    with daemon.client(shared=False, data_plane=plane) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        with pytest.raises(DocumentNotFound):
            list(c.fetch("0" * 64, [0]))
        with pytest.raises(InvalidArgument, match="out of range"):
            list(c.fetch(doc.doc_id, [TINY.n_chunks]))
        with pytest.raises(InvalidArgument):
            list(c.fetch(doc.doc_id, [0], layers=(2, 9)))
        assert plane_stats(c)["errors"] == (3 if plane else 0)
        # the connection is still in step after errors
        assert [cid for cid, _ in c.fetch(doc.doc_id, [1, 0])] == [1, 0]


def test_damaged_chunk_is_data_loss_mid_stream(daemon_factory, backend):
    doc = make_doc(TINY)
    d = daemon_with_damaged_chunk(daemon_factory, backend, doc, "4")
    with d.client(shared=False) as c:
        got = []
        with pytest.raises(DataLoss, match="chunk 4"):
            for cid, arr in c.fetch(doc.doc_id, [3, 4, 5]):
                got.append(cid)
        assert got == [3]  # the error record follows the good chunk; nothing after it
        assert plane_stats(c)["errors"] == 1
        assert np.array_equal(dict(c.fetch(doc.doc_id, [5]))[5], doc.chunks[5])


@pytest.mark.parametrize("plane", [True, False], ids=["data-plane", "grpc"])
def test_stopping_early_keeps_the_connection_usable(daemon, plane):
    doc = make_doc(REAL)
    with daemon.client(shared=False, data_plane=plane) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        for _ in range(3):
            it = c.fetch(doc.doc_id, range(REAL.n_chunks))
            next(it)
            it.close()  # payload frames still on their way: the connection is dropped, not reused
        assert_doc_equal(c, doc)
    with daemon.client(data_plane=plane) as c:  # shared refs still on their way are drained: their leases come back
        list(c.fetch(doc.doc_id, range(REAL.n_chunks)))  # promote
        it = c.fetch(doc.doc_id, range(REAL.n_chunks))
        next(it)
        it.close()
        list(c.fetch(doc.doc_id, [0]))
        list(c.fetch(doc.doc_id, [0]))
        assert c.stats().shared["leases_active"] <= 2


def test_falls_back_to_grpc_without_a_data_plane(daemon_factory):
    d = daemon_factory("lmdb", "--no-data-plane")
    assert not os.path.exists(data_path(unix_path(d.addr)))
    doc = make_doc(REAL)
    with d.client(shared=False) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(c, doc)
        assert c.stats().data_plane is None


def test_client_survives_a_daemon_restart(daemon_factory):
    d = daemon_factory("lmdb")
    doc = make_doc(TINY)
    with d.client(shared=False) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(c, doc)  # a pooled data-plane connection now exists
        d.restart()
        assert_doc_equal(c, doc)  # the stale connection breaks before any frame: gRPC carries the call
        assert_doc_equal(c, doc)


def raw_conn(daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(data_path(unix_path(daemon.addr)))
    return s


def read_record(s: socket.socket) -> tuple[int, bytes, bytes]:
    def exact(n):
        buf = b""
        while len(buf) < n:
            part = s.recv(n - len(buf))
            if not part:
                raise ConnectionResetError
            buf += part
        return buf
    kind, hlen, plen = REC.unpack(exact(REC.size))
    return kind, exact(hlen), exact(plen)


def test_the_protocol_on_a_raw_socket(daemon):
    """The framing written up in store.proto, spoken by hand; bad input gets an error record."""
    doc = make_doc(TINY)
    with daemon.client(shared=False) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
    s = raw_conn(daemon)
    s.sendall(HELLO)
    assert s.recv(len(HELLO)) == HELLO
    req = pb.FetchRequest(doc_id=doc.doc_id, chunk_ids=[2]).SerializeToString()
    s.sendall(REC.pack(K_FETCH, len(req), 0) + req)
    kind, head, payload = read_record(s)
    frame = pb.FetchFrame.FromString(head)
    assert kind == K_FRAME and frame.chunk_id == 2 and frame.chunk_bytes == len(payload) == doc.chunks[2].nbytes
    assert payload == doc.chunks[2].tobytes() and not frame.data
    assert read_record(s)[0] == K_END
    # a record of the wrong kind: an INVALID_ARGUMENT error record, then the daemon hangs up
    s.sendall(REC.pack(K_FRAME, 0, 0))
    kind, head, _ = read_record(s)
    assert kind == K_ERROR and b"INVALID_ARGUMENT" in head
    assert s.recv(1) == b""
    s.close()
    s = raw_conn(daemon)  # a bad hello
    s.sendall(b"HELLO-WORLD\n")
    kind, head, _ = read_record(s)
    assert kind == K_ERROR and b"FAILED_PRECONDITION" in head
    s.close()
    s = raw_conn(daemon)  # a request that does not parse
    s.sendall(HELLO)
    s.recv(len(HELLO))
    s.sendall(REC.pack(K_FETCH, 3, 0) + b"\xff\xff\xff")
    kind, head, _ = read_record(s)
    assert kind == K_ERROR and b"INVALID_ARGUMENT" in head
    s.close()
    with daemon.client(shared=False) as c:  # the daemon is unharmed
        assert c.health() == "SERVING"
        assert_doc_equal(c, doc)


def test_sigterm_removes_the_data_socket(daemon):
    path = data_path(unix_path(daemon.addr))
    assert os.path.exists(path)
    with daemon.client(shared=False) as c:
        doc = make_doc(TINY)
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, [0]))  # an idle pooled connection: shutdown must not wait for it
        assert daemon.stop(timeout=15) == 0
    assert not os.path.exists(path)
