"""Benchmark of the cache daemon's Fetch: throughput (GB/s) and per-chunk latency (p50/p99).

Cells: chunk sizes 0.25-8 MiB (the real layout, 30 layers x 2 x 3 KV heads x 64 dims fp32, with the
chunk size in tokens chosen to hit each byte size) x RAM-hot / page-cache / disk-cold x LMDB / Zarr x unix socket /
TCP loopback / same-host fast path (read-only mapped views, the default; and `fastcopy`: a client with
writable=True, one copy into the caller's array) x 1 / 4 concurrent client processes; each client fetches one chunk
per call (latency = one Fetch call) from its own document; one more cell per path streams a whole
document in one call (how the engine fetches its selected chunks; latency = call time / chunks). Baselines measured in the same run:
a plain memory copy of the same bytes (cycling over as many distinct chunks as a client's document
holds) into a warm destination (memory bandwidth; the limit; a copy into a fresh array is printed beside it), and a direct read of the same stored bytes (the Zarr chunk file, or an
LMDB get; the disk limit). The machine may be shared: every headline-size cell and baseline runs `--reps`
times (default 3) after an untimed warm-up call (one that reads no data), and the median is reported with
the load average.

Temperatures: hot = in the daemon's RAM tier; pcache = not there (single-chunk cells: the daemon runs with a
RAM cap far below the clients' documents, so a sequential pass misses every time; whole-document cells:
room for one document, and each repetition asks for another one) but in the OS page cache;
disk-cold = in neither: the page cache is dropped before every repetition (needs root; without it the
cold cells are skipped and the pcache cells stand in). The direct-read baseline reads the same files
under the same condition (disk-cold: just before and just after the cold cells; the faster counts).

    python tools/bench_store.py --quick --out results/bench_store
    python tools/bench_store.py --quick --s3-only     # the object-store cells alone (--s3 adds them to a run)

The last stdout line is one JSON object with the headline figures and ratios.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from acre_store import DocLayout, DocMeta, EmbeddedStore, StoreStats  # noqa: E402
from acre_store.wire import FETCH_FRAME_BYTES  # noqa: E402
from tools.grpc_ceiling import measure as grpc_bare  # noqa: E402

MiB = 1 << 20
TOKEN_BYTES = 30 * 2 * 3 * 64 * 4  # one token of the real layout, all layers, fp32
HEADLINE_MIB = 4  # closest to the default model's chunk (64 tokens = 2.8 MiB)


def layout_for(size_mib: float, n_chunks: int) -> DocLayout:
    c = max(1, round(size_mib * MiB / TOKEN_BYTES))
    return DocLayout(30, 3, 64, c, "float32", c * n_chunks)


def doc_id(backend: str, size: float, i: int) -> str:
    import hashlib

    return hashlib.sha256(f"bench|{backend}|{size}|{i}".encode()).hexdigest()


def chunks_per_doc(size_mib: float, doc_mib: float) -> int:
    return max(4, int(doc_mib // size_mib))


def build_data(path: str, backend: str, sizes: list[float], doc_mib: float, n_clients: int) -> dict:
    """Docs (one per client and size) written with the embedded store; returns {size: [(doc_id, n_chunks)]}."""
    rng = np.random.default_rng(0)
    docs = {}
    with EmbeddedStore(path, backend=backend, ram_bytes=0) as s:
        for size in sizes:
            n = chunks_per_doc(size, doc_mib)
            L = layout_for(size, n)
            block = rng.standard_normal(L.chunk_shape(0)).astype(np.float32)
            docs[size] = []
            for i in range(n_clients):
                meta = DocMeta(doc_id(backend, size, i), "bench", L, name=f"{size}MiB-{i}")
                s.put(meta, {}, (block + np.float32(c) for c in range(n)))
                docs[size].append((meta.doc_id, n))
    return docs


# -- client processes ---------------------------------------------------------------------------

def client_main(rank: int, tasks, results) -> None:
    from acre_store.client import StoreClient
    from acre_store.errors import InvalidArgument

    clients = {}
    while True:
        task = tasks.get()
        if task is None:
            break
        key = (task["addr"], task["shared"], task["writable"], task["data_plane"])
        if key not in clients:
            clients[key] = StoreClient(task["addr"], shared=task["shared"], writable=task["writable"],
                                       data_plane=task["data_plane"])
        c = clients[key]
        ids = list(range(task["n_chunks"]))
        # Warm-up (untimed): one call on this connection that reads no data (a chunk id out of range), so it
        # leaves nothing in the daemon's RAM or the page cache.
        try:
            for _ in c.fetch(task["doc"], [len(ids)]):
                pass
        except InvalidArgument:
            pass
        if task["batch"]:  # one call streams the whole document; latency = per call / chunks
            ids = [ids]
        else:
            ids = [[i] for i in ids]
        lat, nbytes, chunks = [], 0, 0
        while time.time() < task["start"]:
            time.sleep(0.001)
        t0 = time.perf_counter()
        end = t0 + task["duration"]
        i = 0
        while True:
            t = time.perf_counter()
            batch = ids[i % len(ids)]
            for _, arr in c.fetch(task["doc"], batch):
                nbytes += arr.nbytes
                chunks += 1
            arr = None  # its lease (a mapped view's) ends with the next call, not in the next cell
            lat.append((time.perf_counter() - t) / len(batch))
            i += 1
            if (task["one_pass"] and i == len(ids)) or (not task["one_pass"] and time.perf_counter() > end and i >= 3):
                break
        results.put((rank, t0, time.perf_counter(), nbytes, lat, chunks))
        c.release_leases()  # the last chunk's lease must not pin RAM entries in the next cell
    for c in clients.values():
        c.close()


class ClientPool:
    def __init__(self, n: int):
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=client_main, args=(r, self.tasks[r], self.results), daemon=True)
                      for r in range(n)]
        for p in self.procs:
            p.start()

    def run(self, n_clients: int, addr: str, shared: bool, docs: list, duration: float, one_pass: bool,
            batch: bool = False, writable: bool = False, reps: int = 1, data_plane: bool = True,
            before_rep=None, rotate: bool = False) -> dict:
        """Median (throughput, p50, p99) over `reps` repetitions of the cell; `before_rep()` runs before each.
        Client r fetches docs[r]; with rotate, docs[r + rep] (another document each repetition)."""
        out = []
        for rep in range(reps):
            if before_rep is not None:
                before_rep()
            start = time.time() + 0.2
            for r in range(n_clients):
                doc, n = docs[(r + rep) % len(docs) if rotate else r]
                self.tasks[r].put(dict(addr=addr, shared=shared, doc=doc, n_chunks=n, duration=duration,
                                       one_pass=one_pass, start=start, batch=batch, writable=writable,
                                       data_plane=data_plane))
            res = [self.results.get(timeout=600) for _ in range(n_clients)]
            t0, t1 = min(r[1] for r in res), max(r[2] for r in res)
            lat = np.concatenate([np.asarray(r[4]) for r in res])
            nbytes, chunks = sum(r[3] for r in res), sum(r[5] for r in res)
            out.append(summary(nbytes, t1 - t0, lat, per_op=nbytes / chunks, parallel=n_clients))
        return median_summary(out)

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(10)


def summary(nbytes: int, seconds: float, lat: np.ndarray, per_op: float | None = None, parallel: int = 1) -> dict:
    """gbps: bytes over wall time (what a busy machine's scheduler leaves of it); p50_gbps: bytes of one
    chunk over its median time (per chunk: a whole-document call's time / its chunks), times the number
    of clients running at once — robust to the time slices that other processes take."""
    per_op = nbytes / max(1, len(lat)) if per_op is None else per_op
    p50 = float(np.percentile(lat, 50))
    return {"gbps": nbytes / seconds / 1e9, "p50_gbps": parallel * per_op / p50 / 1e9, "p50_ms": p50 * 1e3,
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "n": int(len(lat))}


def median_summary(runs: list[dict]) -> dict:
    """Per-key median of repeated runs (the machine is shared and noisy); all runs' throughputs kept."""
    out = {k: float(np.median([r[k] for r in runs])) for k in ("gbps", "p50_gbps", "p50_ms", "p99_ms")}
    out["n"] = int(sum(r["n"] for r in runs))
    out["runs_gbps"] = [round(r["gbps"], 3) for r in runs]
    return out


# -- baselines ----------------------------------------------------------------------------------

def memcpy_baseline(size_mib: float, n_chunks: int, duration: float, fresh: bool, reps: int = 1) -> dict:
    """A plain copy of one chunk's bytes, cycling over `n_chunks` distinct chunks like the cells do (one
    client's document: the same bytes, so the same caches), into a fresh array each time (page faults
    included, and the allocator may or may not reuse warm pages: noisy), or into one warm destination."""
    L = layout_for(size_mib, 1)
    rng = np.random.default_rng(0)
    srcs = [rng.standard_normal(L.chunk_shape(0)).astype(np.float32) for _ in range(n_chunks)]
    warm = np.empty_like(srcs[0])
    np.copyto(warm, srcs[0])
    runs = []
    for _ in range(reps):
        lat, t0 = [], time.perf_counter()
        while time.perf_counter() - t0 < duration or len(lat) < 3:
            src = srcs[len(lat) % n_chunks]
            t = time.perf_counter()
            dst = np.empty_like(src) if fresh else warm
            np.copyto(dst, src)
            lat.append(time.perf_counter() - t)
        runs.append(summary(srcs[0].nbytes * len(lat), time.perf_counter() - t0, np.asarray(lat)))
    return median_summary(runs)


def direct_read_baseline(data: str, backend: str, docs: list, reps: int = 1, before_rep=None) -> dict:
    """Read each stored chunk of one document once, the cheapest way the backend allows (no checks)."""
    runs = []
    for _ in range(reps):
        if before_rep is not None:
            before_rep()
        runs.append(_direct_read(data, backend, docs))
    return median_summary(runs)


def drop_page_cache() -> None:
    """Write back and drop the OS page cache (needs root): the next read of any file comes from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def can_drop_page_cache() -> bool:
    try:
        drop_page_cache()
        return True
    except OSError:
        return False


def _direct_read(data: str, backend: str, docs: list) -> dict:
    doc, n = docs[0]
    lat, nbytes = [], 0
    t0 = time.perf_counter()
    if backend == "zarr":
        from acre_store.tiers.zarr_tier import ZarrTier

        tier = ZarrTier(os.path.join(data, "zarr"))
        for c in range(n):
            t = time.perf_counter()
            path = tier.chunk_path(doc, c)
            with open(path, "rb", buffering=0) as f:
                buf = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
                f.readinto(memoryview(buf))
            nbytes += buf.nbytes
            lat.append(time.perf_counter() - t)
    else:
        import lmdb

        env = lmdb.open(os.path.join(data, "lmdb"), readonly=True, lock=False, subdir=True)
        with env.begin() as txn:
            token = json.loads(bytes(txn.get(b"m/" + doc.encode())))["token"]
        for c in range(n):
            t = time.perf_counter()
            with env.begin(buffers=False) as txn:
                buf = txn.get(f"d/{token}/c/{c:08d}".encode())
            nbytes += len(buf)
            lat.append(time.perf_counter() - t)
        env.close()
    return summary(nbytes, time.perf_counter() - t0, np.asarray(lat))


# -- the daemon ---------------------------------------------------------------------------------

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    def __init__(self, data: str, backend: str, ram_bytes: int, sock_dir: str, extra: list[str] = ()):
        from acre_store.client import StoreClient
        from acre_store.errors import StoreUnavailable

        self.unix = f"unix://{sock_dir}/bench.sock"
        self.tcp = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "acre_store.cli", "store", "serve", "--data", data, "--backend", backend,
             "--listen", self.unix, "--listen", self.tcp, "--insecure", "--ram-bytes", str(ram_bytes), "--log-level", "WARNING", *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                StoreClient(self.unix, connect_timeout=0.5).close()
                break
            except StoreUnavailable:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("daemon did not start")
                time.sleep(0.05)

    def stats(self) -> StoreStats:
        from acre_store.client import StoreClient

        with StoreClient(self.unix) as c:
            return c.stats()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


# -- main ---------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller documents, shorter cells (about 18 minutes; 8 with --sizes 4)")
    ap.add_argument("--out", default=None, help="directory for bench_store.json")
    ap.add_argument("--backends", default="lmdb,zarr")
    ap.add_argument("--sizes", default="0.25,1,4,8", help="chunk sizes in MiB (must include 4, the headline)")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions of each headline-size cell and baseline, median reported "
                         "(default 3; other sizes run once with --quick)")
    ap.add_argument("--no-drop-caches", action="store_true",
                    help="never drop the OS page cache (disk-cold cells are then skipped)")
    ap.add_argument("--s3", action="store_true",
                    help="add the object-store cells (tools/bench_object_store.py; starts moto's S3 server itself)")
    ap.add_argument("--s3-only", action="store_true", help="run the object-store cells only")
    args = ap.parse_args()
    if args.s3 or args.s3_only:
        from tools.bench_object_store import measure, print_cells

        s3 = measure(args.quick, args.backends.split(",")[0], args.reps or 3, layout_for, Daemon, free_port)
        print_cells(s3)
        if args.s3_only:
            print(json.dumps({"quick": args.quick, "load_avg_1m": round(os.getloadavg()[0], 2),
                              "cpus": os.cpu_count(), "object_store": s3}))
            return 0

    sizes = [float(x) if "." in x else int(x) for x in args.sizes.split(",")]
    if HEADLINE_MIB not in sizes:
        ap.error(f"--sizes must include the headline size {HEADLINE_MIB}")
    doc_mib = 32 if args.quick else 128
    duration = 0.5 if args.quick else 2.0
    head_reps = args.reps or 3

    def reps_for(size):
        return head_reps if (size == HEADLINE_MIB or not args.quick) else 1

    backends = args.backends.split(",")
    # fast: read-only views of the daemon's shared memory (the default); fastcopy: connect(writable=True),
    # each chunk copied into the caller's own array.
    # unix: the same-host data plane (a plain socket beside the daemon's unix socket; bytes on the socket);
    # grpc: the same unix socket through gRPC only (connect(data_plane=False)); tcp: gRPC over loopback.
    transports = ["unix", "grpc", "tcp", "fast", "fastcopy"]
    clients = [1, 4]
    # hot: in the daemon's RAM tier; pcache: not there, but in the OS page cache; cold: in neither (the page
    # cache is dropped before every repetition: needs root, else this temperature is skipped)
    drop = not args.no_drop_caches and can_drop_page_cache()
    temps = ["hot", "pcache"] + (["cold"] if drop else [])
    if not drop:
        print("# cannot drop the OS page cache (not root?): disk-cold cells skipped; pcache cells stand in",
              file=sys.stderr)
    work = tempfile.mkdtemp(prefix="acre-bench-")
    sock_dir = tempfile.mkdtemp(prefix="acre-", dir="/tmp")
    rows, base = [], {}
    pool = ClientPool(max(clients))
    try:
        for size in sizes:
            n = chunks_per_doc(size, doc_mib)
            base[("memcpy", size)] = memcpy_baseline(size, n, duration, fresh=False, reps=reps_for(size))
            base[("memcpy_fresh", size)] = memcpy_baseline(size, n, duration, fresh=True, reps=reps_for(size))
        # the ceiling of the socket cells: gRPC-Python alone, same bytes per call and frame size, no store
        base[("grpc_bare", HEADLINE_MIB)] = median_summary(
            [grpc_bare(int(HEADLINE_MIB * MiB), FETCH_FRAME_BYTES, 30 if args.quick else 60) for _ in range(head_reps)])
        for backend in backends:
            data = os.path.join(work, backend)
            t = time.perf_counter()
            docs = build_data(data, backend, sizes, doc_mib, max(clients))
            print(f"# {backend}: wrote {len(sizes) * max(clients)} documents in {time.perf_counter() - t:.1f}s",
                  file=sys.stderr)
            for size in sizes:
                base[(backend, "direct", size)] = direct_read_baseline(data, backend, docs[size], reps_for(size))

            def direct_cold(when: str) -> None:
                for size in sizes:
                    base[(backend, f"direct_cold_{when}", size)] = direct_read_baseline(
                        data, backend, docs[size], reps_for(size), before_rep=drop_page_cache)

            for temp in temps:
                if temp == "cold":
                    direct_cold("before")
                hits = misses = 0
                # hot: one daemon with room for everything. pcache/cold, per chunk size: for single-chunk calls, a
                # daemon with a RAM cap of one chunk per client (leased while it is read) and one more, far below
                # the clients' documents, so a sequential pass misses every time; for whole-document calls, a
                # daemon with room for one document and one chunk (a call's chunks stay leased until the next
                # call: with less room the last ones would not fit and would travel over the socket), each
                # repetition on another client's document, so none of it is in RAM when the call starts.
                if temp == "hot":
                    runs = [(sizes, 4 << 30, ("1 chunk", "all"))]
                else:
                    runs = [r for size in sizes for r in (
                        ([size], int((max(clients) + 1) * size * MiB) + MiB, ("1 chunk",)),
                        ([size], int((docs[size][0][1] + 1) * size * MiB) + MiB, ("all",)))]
                for group, ram, calls in runs:
                    d = Daemon(data, backend, ram, sock_dir)
                    try:
                        before = d.stats().ram
                        for size in group:
                            if temp == "hot":  # promote everything once
                                pool.run(max(clients), d.unix, True, docs[size], 0, one_pass=True)
                            for tr in transports:
                                addr, shared = {"unix": (d.unix, False), "grpc": (d.unix, False), "tcp": (d.tcp, False),
                                                "fast": (d.unix, True), "fastcopy": (d.unix, True)}[tr]
                                kw = dict(one_pass=(temp != "hot"), writable=(tr == "fastcopy"), reps=reps_for(size),
                                          data_plane=(tr != "grpc"),
                                          before_rep=drop_page_cache if temp == "cold" else None)
                                if "1 chunk" in calls:
                                    for n in clients:
                                        r = pool.run(n, addr, shared, docs[size], duration, **kw)
                                        rows.append(dict(backend=backend, temp=temp, transport=tr, clients=n,
                                                         size_mib=size, calls="1 chunk", **r))
                                if "all" in calls:  # how the engine fetches: one call for all the chunks it selected
                                    r = pool.run(1, addr, shared, docs[size], duration, batch=True,
                                                 rotate=(temp != "hot"), **kw)
                                    rows.append(dict(backend=backend, temp=temp, transport=tr, clients=1,
                                                     size_mib=size, calls="all", **r))
                        after = d.stats().ram
                        hits += after.hits - before.hits
                        misses += after.misses - before.misses
                    finally:
                        d.stop()
                if temp != "hot":
                    base[(backend, f"{temp}_hit_rate")] = hits / max(1, hits + misses)
                if temp == "cold":
                    # This VM's disk reads at different speeds minutes apart (right after the documents are
                    # written it is slower): the baseline is read just before and just after the cold cells,
                    # and the faster of the two (per-call median) is the limit the cells are judged against.
                    direct_cold("after")
                    for size in sizes:
                        base[(backend, "direct_cold", size)] = max(
                            (base[(backend, f"direct_cold_{w}", size)] for w in ("before", "after")),
                            key=lambda r: r["p50_gbps"])
            shutil.rmtree(data, ignore_errors=True)
    finally:
        pool.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)

    # -- table ------------------------------------------------------------------------------------
    print(f"{'backend':<7} {'temp':<5} {'path':<8} {'cl':>2} {'call':<7} {'MiB':>5} {'GB/s':>7} {'p50GB/s':>8} {'p50 ms':>8}"
          f" {'p99 ms':>8} {'n':>5}   limit GB/s")
    for r in rows:
        limit = {"hot": base[("memcpy", r["size_mib"])], "pcache": base[(r["backend"], "direct", r["size_mib"])],
                 "cold": base.get((r["backend"], "direct_cold", r["size_mib"]))}[r["temp"]]
        print(f"{r['backend']:<7} {r['temp']:<5} {r['transport']:<8} {r['clients']:>2} {r['calls']:<7} {r['size_mib']:>5g} "
              f"{r['gbps']:>7.2f} {r['p50_gbps']:>8.2f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['n']:>5}   "
              f"{limit['gbps']:.2f} / p50 {limit['p50_gbps']:.2f} ({'memcpy' if r['temp'] == 'hot' else 'direct read'})")
    print()
    for size in sizes:
        m = base[("memcpy", size)]
        mf = base[("memcpy_fresh", size)]
        line = (f"baseline {size:>5g} MiB: memcpy {m['gbps']:.2f} GB/s (p50 {m['p50_gbps']:.2f} GB/s, "
                f"{m['p50_ms']:.2f} ms; into a fresh array {mf['gbps']:.2f}, p50 {mf['p50_gbps']:.2f})")
        for b in backends:
            dr = base[(b, "direct", size)]
            line += f"; {b} direct read {dr['gbps']:.2f} GB/s (p50 {dr['p50_gbps']:.2f} GB/s, {dr['p50_ms']:.2f} ms)"
            if (b, "direct_cold", size) in base:
                dc = base[(b, "direct_cold", size)]
                line += f", from disk {dc['gbps']:.2f} GB/s (p50 {dc['p50_gbps']:.2f} GB/s, {dc['p50_ms']:.2f} ms; " + \
                    " / ".join(f"{w} the cold cells p50 {base[(b, f'direct_cold_{w}', size)]['p50_gbps']:.2f}"
                               for w in ("before", "after")) + ")"
        print(line)
    g = base[("grpc_bare", HEADLINE_MIB)]
    print(f"ceiling {HEADLINE_MIB:>5g} MiB: bare gRPC-Python over a unix socket (tools/grpc_ceiling.py) "
          f"{g['gbps']:.2f} GB/s (p50 {g['p50_gbps']:.2f} GB/s, {g['p50_ms']:.2f} ms)")
    for b in backends:
        for temp in temps[1:]:
            print(f"{temp} RAM hit rate ({b}): {base[(b, f'{temp}_hit_rate')]:.3f}")

    def cell(backend, temp, tr, n=1, size=HEADLINE_MIB, calls="1 chunk", key="gbps"):
        return next(r for r in rows if (r["backend"], r["temp"], r["transport"], r["clients"], r["size_mib"],
                                        r["calls"]) == (backend, temp, tr, n, size, calls))[key]

    head = {"chunk_mib": HEADLINE_MIB, "clients": 1, "quick": args.quick, "reps": head_reps,
            "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "memcpy_gbps": round(base[("memcpy", HEADLINE_MIB)]["gbps"], 3),
            "memcpy_fresh_gbps": round(base[("memcpy_fresh", HEADLINE_MIB)]["gbps"], 3),
            "grpc_bare_unix_p50_gbps": round(base[("grpc_bare", HEADLINE_MIB)]["p50_gbps"], 3)}
    memcpy = base[("memcpy", HEADLINE_MIB)]
    head["page_cache_dropped"] = drop
    if args.s3:
        head["object_store"] = s3
    for b in backends:
        # disk-cold: the page cache dropped (true disk reads) when the bench may do it, else page-cache reads
        cold = "cold" if drop else "pcache"
        direct = base[(b, "direct", HEADLINE_MIB)]
        direct_cold = base[(b, "direct_cold" if drop else "direct", HEADLINE_MIB)]

        def ratio(temp, tr, limit, key="gbps", calls="1 chunk", limit_key=None):
            return round(cell(b, temp, tr, calls=calls, key=key) / limit[limit_key or key], 3)

        head[b] = {
            "ram_hot_unix_gbps": round(cell(b, "hot", "unix"), 3),
            "ram_hot_grpc_unix_gbps": round(cell(b, "hot", "grpc"), 3),
            "ram_hot_tcp_gbps": round(cell(b, "hot", "tcp"), 3),
            "ram_hot_unix_4clients_gbps": round(cell(b, "hot", "unix", 4), 3),
            "ram_hot_unix_batched_gbps": round(cell(b, "hot", "unix", calls="all"), 3),
            "ram_hot_fast_gbps": round(cell(b, "hot", "fast"), 3),
            "ram_hot_fast_4clients_gbps": round(cell(b, "hot", "fast", 4), 3),
            "ram_hot_fast_batched_gbps": round(cell(b, "hot", "fast", calls="all"), 3),
            "ram_hot_fastcopy_gbps": round(cell(b, "hot", "fastcopy"), 3),
            "fast_vs_memcpy": ratio("hot", "fast", memcpy),
            "fastcopy_vs_memcpy": ratio("hot", "fastcopy", memcpy),
            "fast_batched_vs_memcpy": ratio("hot", "fast", memcpy, calls="all"),
            "disk_cold_fast_gbps": round(cell(b, cold, "fast"), 3),
            "disk_cold_fastcopy_gbps": round(cell(b, cold, "fastcopy"), 3),
            "disk_cold_unix_gbps": round(cell(b, cold, "unix"), 3),
            "disk_cold_fast_batched_gbps": round(cell(b, cold, "fast", calls="all"), 3),
            "direct_read_disk_gbps": round(direct_cold["gbps"], 3),
            "disk_cold_vs_direct": ratio(cold, "fast", direct_cold),
            "page_cache_fast_gbps": round(cell(b, "pcache", "fast"), 3),
            "direct_read_page_cache_gbps": round(direct["gbps"], 3),
            "page_cache_vs_direct": ratio("pcache", "fast", direct),
            "cold_ram_hit_rate": round(base[(b, f"{cold}_hit_rate")], 3),
            # The same ratios from per-call medians (bytes of one call / its p50 time, for the cells and the
            # baselines alike): what each path costs when it runs, without the time slices that other
            # processes on a shared machine take (wall-clock figures above include them).
            "p50": {
                "ram_hot_unix_gbps": round(cell(b, "hot", "unix", key="p50_gbps"), 3),
                "ram_hot_grpc_unix_gbps": round(cell(b, "hot", "grpc", key="p50_gbps"), 3),
                "ram_hot_grpc_unix_vs_bare_grpc": round(cell(b, "hot", "grpc", key="p50_gbps")
                                                        / base[("grpc_bare", HEADLINE_MIB)]["p50_gbps"], 3),
                "ram_hot_unix_batched_gbps": round(cell(b, "hot", "unix", calls="all", key="p50_gbps"), 3),
                "ram_hot_fast_gbps": round(cell(b, "hot", "fast", key="p50_gbps"), 3),
                "memcpy_gbps": round(memcpy["p50_gbps"], 3),
                "fast_vs_memcpy": ratio("hot", "fast", memcpy, "p50_gbps"),
                "fastcopy_vs_memcpy": ratio("hot", "fastcopy", memcpy, "p50_gbps"),
                "fast_batched_vs_memcpy": ratio("hot", "fast", memcpy, "p50_gbps", calls="all"),
                "disk_cold_fast_gbps": round(cell(b, cold, "fast", key="p50_gbps"), 3),
                "direct_read_disk_gbps": round(direct_cold["p50_gbps"], 3),
                **({f"direct_read_disk_{w}_gbps": round(base[(b, f"direct_cold_{w}", HEADLINE_MIB)]["p50_gbps"], 3)
                    for w in ("before", "after")} if drop else {}),
                "disk_cold_vs_direct": ratio(cold, "fast", direct_cold, "p50_gbps"),
                "disk_cold_fastcopy_vs_direct": ratio(cold, "fastcopy", direct_cold, "p50_gbps"),
                # A whole-document call against a direct read of the whole document (both timed from the first
                # byte to the last; the direct read's per-chunk median would leave out its slow first chunks).
                "disk_cold_batched_vs_direct": ratio(cold, "fast", direct_cold, "p50_gbps", calls="all",
                                                     limit_key="gbps"),
                "page_cache_vs_direct": ratio("pcache", "fast", direct, "p50_gbps"),
            },
        }
        # Judged on the per-call medians: on a shared machine the wall-clock baselines swing by 8x between
        # runs (a 0.3 ms copy loses whole time slices), the medians by a few percent.
        p = head[b]["p50"]
        head[b]["targets_met"] = {
            "ram_hot_socket_ge_1gbps": p["ram_hot_unix_gbps"] >= 1.0,
            "fast_ge_half_memcpy": p["fast_vs_memcpy"] >= 0.5,
            "cold_ge_half_direct": p["disk_cold_vs_direct"] >= 0.5,
        }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_store.json"), "w") as f:
            json.dump({"headline": head, "rows": rows,
                       "baselines": [dict(kind=k[0] if len(k) == 2 else k[1], backend=k[0] if len(k) == 3 else "",
                                          size_mib=k[-1], **v) for k, v in base.items() if isinstance(v, dict)]},
                      f, indent=1)
    print(json.dumps(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
