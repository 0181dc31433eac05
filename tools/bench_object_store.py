"""Object-store cells of tools/bench_store.py (`--s3`): a cold whole-document fetch through a daemon that
reads the document through from the bucket, against a direct ranged read of the same objects with the
same client library (obstore), same range size and parallelism, in the same run.

The S3-compatible server is moto's standalone server in its own process on 127.0.0.1 (no network): its
throughput is a Python web server's, so both sides share that ceiling; the ratio is the figure to read.
Each repetition reads a document neither path has read before (ingested through another daemon first),
each timed read after a second's pause (the daemon commits a read-through copy to its disk in the
background: that pause lets it end before either path is timed again).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from acre_store import DocMeta, StoreUnavailable

MiB = 1 << 20


def start_moto(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.list_buckets()
            return proc
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)


def direct_read(tier_cfg, doc_id: str) -> float:
    """Seconds to read a published document straight from the bucket: its manifest, then every byte of its
    L1 and shards with ranged GETs (`range_bytes` each, `parallel` at a time), without any check."""
    import obstore
    from obstore.store import S3Store

    from acre_store.tiers.object_tier import Manifest, ObjectTier

    st = S3Store(tier_cfg.bucket, prefix=tier_cfg.prefix, endpoint=os.environ["AWS_ENDPOINT_URL"],
                 client_options={"allow_http": True})
    d = ObjectTier.doc_dir(doc_id)
    t0 = time.perf_counter()
    man = Manifest.from_json(bytes(obstore.get(st, f"{d}/manifest.json").bytes()))
    l1 = sum(s.nbytes for s in man.record.l1)
    L = man.record.meta.layout
    starts = man.shard_starts + [L.n_chunks]
    reqs = [(f"{d}/l1.bin", 0, l1)] if l1 else []
    for s in range(len(man.shard_starts)):
        size = sum(L.chunk_nbytes(c) for c in range(starts[s], starts[s + 1]))
        reqs += [(f"{d}/shard-{s:05d}.bin", a, min(a + tier_cfg.range_bytes, size))
                 for a in range(0, size, tier_cfg.range_bytes)]
    with ThreadPoolExecutor(tier_cfg.parallel) as pool:
        n = sum(len(b) for b in pool.map(lambda r: obstore.get_range(st, r[0], start=r[1], end=r[2]), reqs))
    dt = time.perf_counter() - t0
    assert n == L.kv_nbytes + l1
    return dt


def settle(client, timeout: float = 120.0) -> None:
    """Wait until the daemon has no document landing (its background download waits for a quiet spell,
    `--object-land-quiet`, then runs and commits), then one more second."""
    deadline = time.monotonic() + timeout
    while client.stats().object_store["landing"] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)


def measure(quick: bool, backend: str, reps: int, layout_for, daemon_cls, free_port) -> dict:
    """The cells, as one dict: per-rep seconds and GB/s of both paths, and their ratio (median)."""
    from acre_store.tiers.object_tier import ObjectStoreConfig

    doc_mib = 32 if quick else 128
    n_chunks = doc_mib // 4
    L = layout_for(4, n_chunks)
    port = free_port()
    env_before = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    moto = start_moto(port)
    work = tempfile.mkdtemp(prefix="acre-bench-s3-")
    daemons = []
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="acre-bench")
        cfg = ObjectStoreConfig("s3://acre-bench/kv")
        flags = ["--object-store", cfg.url]
        writer = daemon_cls(os.path.join(work, "a"), backend, 1 << 30, tempfile.mkdtemp(dir="/tmp"), extra=flags)
        reader = daemon_cls(os.path.join(work, "b"), backend, 1 << 30, tempfile.mkdtemp(dir="/tmp"), extra=flags)
        daemons = [writer, reader]
        rng = np.random.default_rng(0)
        block = rng.standard_normal(L.chunk_shape(0)).astype(np.float32)
        from acre_store.client import StoreClient

        ids = []
        with StoreClient(writer.unix) as w:
            for i in range(2 * reps + 1):  # one warm-up, then reps for each path
                meta = DocMeta(f"{i:064x}", "bench", L, name=f"s3-{i}")
                w.put(meta, {}, (block + np.float32(c) for c in range(n_chunks)))
                ids.append(meta.doc_id)
        through, direct, hot = [], [], []
        with StoreClient(reader.unix) as r:
            r.info(ids[0])  # warm-up: connections, first read-through
            for i in range(reps):
                doc_daemon, doc_direct = ids[1 + 2 * i], ids[2 + 2 * i]
                settle(r)  # the previous read-through's download and commit run in the background: let them end
                t0 = time.perf_counter()
                n = sum(a.nbytes for _, a in r.fetch(doc_daemon, range(n_chunks)))
                through.append(time.perf_counter() - t0)
                assert n == L.kv_nbytes
                t0 = time.perf_counter()
                sum(a.nbytes for _, a in r.fetch(doc_daemon, range(n_chunks)))
                hot.append(time.perf_counter() - t0)
                settle(r)  # the same quiet start for the direct read (this read-through lands meanwhile)
                direct.append(direct_read(cfg, doc_direct))
        gb = L.kv_nbytes / 1e9
        med = lambda xs: float(np.median(xs))  # noqa: E731
        return {
            "doc_mib": round(L.kv_nbytes / MiB, 1), "chunk_mib": round(L.chunk_nbytes(0) / MiB, 2),
            "n_chunks": n_chunks, "reps": reps, "backend": backend,
            "range_mib": cfg.range_bytes // MiB, "parallel": cfg.parallel, "shard_mib": cfg.shard_bytes // MiB,
            "cold_through_daemon_s": [round(x, 3) for x in through],
            "direct_ranged_read_s": [round(x, 3) for x in direct],
            "cold_through_daemon_gbps": round(gb / med(through), 3),
            "direct_ranged_read_gbps": round(gb / med(direct), 3),
            "ram_hot_after_gbps": round(gb / med(hot), 3),
            "cold_vs_direct": round(med(direct) / med(through), 3),
        }
    finally:
        for d in daemons:
            try:
                d.stop()
            except (StoreUnavailable, subprocess.TimeoutExpired):
                d.proc.kill()
        moto.terminate()
        moto.wait(30)
        shutil.rmtree(work, ignore_errors=True)
        os.environ.clear()
        os.environ.update(env_before)


def print_cells(r: dict) -> None:
    print(f"object store ({r['backend']}, moto on 127.0.0.1): {r['doc_mib']} MiB document, {r['n_chunks']} chunks of "
          f"{r['chunk_mib']} MiB, shards of {r['shard_mib']} MiB, ranged GETs of {r['range_mib']} MiB x {r['parallel']}")
    print(f"  cold fetch through a daemon (read-through) {r['cold_through_daemon_gbps']:.3f} GB/s  "
          f"{r['cold_through_daemon_s']} s")
    print(f"  direct ranged read, same objects, obstore  {r['direct_ranged_read_gbps']:.3f} GB/s  "
          f"{r['direct_ranged_read_s']} s")
    print(f"  ratio (median) {r['cold_vs_direct']:.3f} (target >= 0.7); RAM-hot again afterwards "
          f"{r['ram_hot_after_gbps']:.3f} GB/s")
