"""The daemon as a real process on a real unix socket: round trips, crashes, shutdown, addresses."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from acre_store import DocumentNotFound, InvalidArgument, StoreUnavailable, connect
from acre_store.client import StoreClient

from .support import REAL, ROOT, TINY, assert_doc_equal, make_doc, short_tmp


def test_round_trip_and_restart(daemon):
    doc, small = make_doc(REAL), make_doc(TINY, seed=1)
    with daemon.client() as c:
        assert c.health() == "SERVING"
        meta = c.put(doc.meta, doc.l1, iter(doc.chunks))
        assert meta.doc_id == doc.doc_id and meta.created > 0 and meta.extra == doc.meta.extra
        c.put(small.meta, small.l1, small.chunks)
        assert_doc_equal(c, doc)
        for c_id, arr in c.fetch(doc.doc_id, [4, 1], layers=(3, 11)):
            assert arr.tobytes() == doc.chunks[c_id][3:11].tobytes()
        res = c.fetch_async(doc.doc_id, range(REAL.n_chunks), layers=(29, 30)).result()
        assert all(np.array_equal(res[i], doc.chunks[i][29:30]) for i in range(REAL.n_chunks))
        assert c.info(doc.doc_id) == meta
        c.pin(small.doc_id)
        assert [m.doc_id for m in c.list()] == [doc.doc_id, small.doc_id]
        again = c.put(doc.meta, doc.l1, iter(()))
        assert again.created == meta.created
        st = c.stats()
        assert st.n_docs == 2 and st.ops.puts == 2 and st.ops.put_noops == 1
    daemon.restart()
    with daemon.client() as c:
        assert_doc_equal(c, doc)
        assert_doc_equal(c, small)
        assert c.info(small.doc_id).pinned
        c.delete(doc.doc_id)
        with pytest.raises(DocumentNotFound):
            c.info(doc.doc_id)
        with pytest.raises(DocumentNotFound):
            list(c.fetch(doc.doc_id, [0]))


def _slow_chunks(doc, sent: threading.Event, after: int, hold: threading.Event | None = None):
    for i, ch in enumerate(doc.chunks):
        if i == after:
            sent.set()
            if hold is not None:
                hold.wait(30)
            else:
                time.sleep(30)
        yield ch


def test_kill9_during_put_leaves_no_trace(daemon):
    kept, lost = make_doc(TINY, seed=1), make_doc(REAL, seed=2)
    with daemon.client() as c:
        c.put(kept.meta, kept.l1, kept.chunks)
    sent = threading.Event()
    errors = []

    def put():
        try:
            with daemon.client(retries=0) as c:
                c.put(lost.meta, lost.l1, _slow_chunks(lost, sent, after=4))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=put)
    t.start()
    assert sent.wait(30)
    time.sleep(0.3)  # let the daemon stage what was sent
    daemon.kill9()
    t.join(60)
    assert errors and isinstance(errors[0], StoreUnavailable), errors
    daemon.start()
    with daemon.client() as c:
        assert [m.doc_id for m in c.list()] == [kept.doc_id]
        assert_doc_equal(c, kept)
        st = c.stats()
        assert st.ops.discarded_at_start == 1
        assert st.disk.used_bytes == kept.meta.layout.kv_nbytes + sum(a.nbytes for a in kept.l1.values())
        c.put(lost.meta, lost.l1, lost.chunks)  # the same document can be put again
        assert_doc_equal(c, lost)
    if daemon.backend == "zarr":
        assert os.listdir(os.path.join(daemon.data, "zarr", "staging")) == []


def test_kill9_right_after_commit_keeps_the_document(daemon):
    doc = make_doc(REAL)
    with daemon.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
    daemon.kill9()
    daemon.start()
    with daemon.client() as c:
        assert_doc_equal(c, doc)
        assert c.stats().ops.discarded_at_start == 0


def test_client_killed_mid_put(daemon_factory):
    d = daemon_factory("lmdb")
    doc = make_doc(REAL)
    script = f"""
import sys, time
sys.path.insert(0, {ROOT!r})
from tests.store.support import make_doc, REAL
from acre_store.client import StoreClient
doc = make_doc(REAL)
def chunks():
    for i, c in enumerate(doc.chunks):
        if i == 3:
            print("sent", flush=True)
            time.sleep(60)
        yield c
StoreClient({d.addr!r}).put(doc.meta, doc.l1, chunks())
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "sent"
        time.sleep(0.3)
    finally:
        p.kill()
        p.wait()
    with d.client() as c:
        deadline = time.monotonic() + 10
        while c.stats().ops.put_aborts < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        st = c.stats()
        assert st.ops.put_aborts == 1 and st.disk.reserved_bytes == 0 and c.list() == []
        c.put(doc.meta, doc.l1, doc.chunks)
        assert_doc_equal(c, doc)


def test_sigterm_drains_in_flight_put(daemon):
    doc = make_doc(REAL)
    sent, hold = threading.Event(), threading.Event()
    result = {}

    def put():
        with daemon.client() as c:
            result["meta"] = c.put(doc.meta, doc.l1, _slow_chunks(doc, sent, after=2, hold=hold))

    t = threading.Thread(target=put)
    t.start()
    assert sent.wait(30)
    daemon.proc.terminate()  # SIGTERM while the put is in flight
    time.sleep(0.5)
    with pytest.raises(StoreUnavailable):  # new calls are refused while draining
        StoreClient(daemon.addr, connect_timeout=0.5, retries=0).list()
    hold.set()
    t.join(30)
    assert result["meta"].doc_id == doc.doc_id
    assert daemon.proc.wait(30) == 0
    assert not os.path.exists(daemon.addr[len("unix://"):])
    daemon.start()
    with daemon.client() as c:
        assert_doc_equal(c, doc)


def test_busy_and_stale_socket(daemon_factory, tmp_path):
    first = daemon_factory("lmdb")
    second = daemon_factory("lmdb", start=False)
    second.sock_dir = first.sock_dir  # same socket, other data
    second.start(wait=False)
    assert second.proc.wait(30) == 1
    assert "another daemon is already serving" in second.log()
    same_data = daemon_factory("lmdb", data=first.data, start=False)
    same_data.start(wait=False)
    assert same_data.proc.wait(30) == 1
    assert "in use by another process" in same_data.log()
    assert "Traceback" not in second.log() + same_data.log()
    # A socket file nobody listens on (a crashed daemon's) is removed with a message.
    stale = daemon_factory("lmdb", start=False)
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale.addr[len("unix://"):])
    s.close()
    stale.start()
    assert "removing stale socket" in stale.log()


def test_unreachable_daemon_names_its_address():
    addr = f"unix://{short_tmp()}/nobody.sock"
    t = time.monotonic()
    with pytest.raises(StoreUnavailable, match="nobody.sock"):
        connect(addr, connect_timeout=0.5)
    assert time.monotonic() - t < 5


def test_client_retries_while_the_daemon_restarts(daemon_factory):
    d = daemon_factory("lmdb")
    doc = make_doc(TINY)
    with d.client(retries=8, backoff_s=0.1) as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        d.stop()
        threading.Timer(0.3, d.start).start()
        assert [m.doc_id for m in c.list()] == [doc.doc_id]  # UNAVAILABLE, retried until back
        assert_doc_equal(c, doc)


def test_bad_requests_map_to_status_codes(daemon_factory):
    d = daemon_factory("lmdb")
    doc = make_doc(TINY)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
        with pytest.raises(DocumentNotFound):
            c.info("0" * 32)
        with pytest.raises(DocumentNotFound):
            c.get_l1("0" * 32)
        with pytest.raises(InvalidArgument):
            c.info("NOT-HEX")
        with pytest.raises(InvalidArgument, match="out of range"):
            list(c.fetch(doc.doc_id, [0, 7]))
        with pytest.raises(InvalidArgument, match="layer range"):
            list(c.fetch(doc.doc_id, [0], layers=(2, 9)))
        with pytest.raises(InvalidArgument):
            c.prefetch(doc.doc_id, [100])
        with pytest.raises(DocumentNotFound):
            c.delete("0" * 32)
