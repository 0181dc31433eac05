"""Four client processes putting and fetching the same and different documents through one daemon."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np

from acre_store.client import StoreClient

from .support import TINY, make_doc

N_PROC, ROUNDS = 4, 5
SHARED_SEEDS = [100, 101]  # every process puts these


def worker(addr: str, rank: int, q) -> None:
    try:
        own = [make_doc(TINY, seed=rank * 10 + i) for i in range(2)]
        shared = [make_doc(TINY, seed=s) for s in SHARED_SEEDS]
        fetched = 0
        with StoreClient(addr) as c:
            for d in shared + own:
                c.put(d.meta, d.l1, iter(d.chunks))
            rng = np.random.default_rng(rank)
            for _ in range(ROUNDS):
                for d in shared + own:
                    ids = [int(x) for x in rng.permutation(TINY.n_chunks)[:4]]
                    layers = (1, 3) if rng.random() < 0.5 else None
                    handle = c.fetch_async(d.doc_id, ids, layers=layers)
                    for cid, arr in handle:
                        want = d.chunks[cid] if layers is None else d.chunks[cid][1:3]
                        assert arr.tobytes() == want.tobytes(), (rank, d.doc_id, cid)
                        fetched += 1
        q.put(("ok", rank, fetched))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put(("error", rank, repr(e)))


def test_four_processes_share_one_daemon(daemon):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(daemon.addr, r, q)) for r in range(N_PROC)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert all(r[0] == "ok" for r in results), results
    fetched = sum(r[2] for r in results)
    with daemon.client() as c:
        st = c.stats()
        n_docs = len(SHARED_SEEDS) + 2 * N_PROC
        assert st.n_docs == n_docs == len(c.list())
        total_puts = N_PROC * (len(SHARED_SEEDS) + 2)
        assert st.ops.puts == n_docs
        assert st.ops.puts + st.ops.put_noops == total_puts
        assert st.ops.put_aborts == 0
        assert st.ops.fetched_chunks == fetched == N_PROC * ROUNDS * 4 * 4
        ram = st.ram
        assert ram.hits + ram.misses == fetched  # one RAM lookup per chunk fetched (L1 never read)
        assert st.disk.reads == ram.misses and st.disk.checksum_failures == 0
        assert st.disk.used_bytes == n_docs * (TINY.kv_nbytes + sum(
            a.nbytes for a in make_doc(TINY).l1.values()))
