"""Several daemons behind one `connect("a,b,c")`: rendezvous routing, fallback when a daemon is down."""
from __future__ import annotations

from collections import Counter

import pytest

from acre_store import DocumentNotFound, StoreUnavailable, connect
from acre_store.multi_client import MultiStoreClient
from acre_store.routing import rendezvous_order, split_addrs

from .support import TINY, assert_doc_equal, make_doc
from .s3_server import local_docs


def test_rendezvous_order_is_stable_and_moves_only_the_removed_homes():
    addrs = [f"unix:///tmp/d{i}.sock" for i in range(5)]
    ids = [f"{i:064x}" for i in range(400)]
    homes = {d: rendezvous_order(d, addrs)[0] for d in ids}
    assert all(rendezvous_order(d, list(reversed(addrs)))[0] == homes[d] for d in ids)  # order-free
    assert min(Counter(homes.values()).values()) > 40  # spread over every daemon
    gone = addrs[2]
    for d in ids:
        new = rendezvous_order(d, [a for a in addrs if a != gone])[0]
        assert new == homes[d] if homes[d] != gone else new == rendezvous_order(d, addrs)[1]
    assert split_addrs(" unix:///a.sock, h:1,,h:1 ") == ["unix:///a.sock", "h:1"]


def test_three_daemons_route_by_hash_and_stopping_one_moves_only_its_documents(on_bucket):
    daemons = [on_bucket() for _ in range(3)]
    addrs = [d.addr for d in daemons]
    docs = [make_doc(TINY, seed=100 + i) for i in range(12)]
    with connect(",".join(addrs)) as multi:
        assert isinstance(multi, MultiStoreClient)
        clients = {d.addr: d.client() for d in daemons}
        homes = {}
        for doc in docs:
            before = {a: c.stats().n_docs for a, c in clients.items()}
            multi.put(doc.meta, doc.l1, doc.chunks)
            grew = [a for a, c in clients.items() if c.stats().n_docs > before[a]]
            homes[doc.doc_id] = rendezvous_order(doc.doc_id, addrs)[0]
            assert grew == [homes[doc.doc_id]]
        for doc in docs:
            assert_doc_equal(multi, doc)
        assert sorted(m.doc_id for m in multi.list()) == sorted(d.doc_id for d in docs)
        before = {a: c.stats().n_docs for a, c in clients.items()}
        assert sum(before.values()) == len(docs)  # each document on its home only

        gone = max(addrs, key=lambda a: sum(h == a for h in homes.values()))
        moved = [d for d in docs if homes[d.doc_id] == gone]
        assert moved
        clients.pop(gone).close()
        next(d for d in daemons if d.addr == gone).kill9()
        for doc in docs:
            assert_doc_equal(multi, doc)  # the moved ones read through on their next daemon
        want = Counter(rendezvous_order(d.doc_id, addrs)[1] for d in moved)
        after = {a: local_docs(c, before[a] + want.get(a, 0)) for a, c in clients.items()}
        assert {a: after[a] - before[a] for a in clients} == {a: want.get(a, 0) for a in clients}
        assert sorted(m.doc_id for m in multi.list()) == sorted(d.doc_id for d in docs)

        multi.delete(docs[0].doc_id)  # on every reachable daemon and in the bucket
        with pytest.raises(DocumentNotFound):
            multi.info(docs[0].doc_id)
        for c in clients.values():
            c.close()
    for d in daemons:
        d.kill9() if d.proc.poll() is None else None
    with connect(",".join(addrs), connect_timeout=0.5) as multi, pytest.raises(StoreUnavailable):
        multi.info(docs[1].doc_id)
