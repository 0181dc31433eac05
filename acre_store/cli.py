"""`acre store serve|ls|stats|rm`: the cache daemon and its inspection commands.

`add_store_parser(subparsers)` registers the `store` command on the main `acre` parser;
`python -m acre_store.cli store ...` runs the same thing on its own. Errors print one line to stderr
and exit non-zero, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time

_SIZE = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$")


def parse_bytes(text: str) -> int:
    """'1073741824', '512M', '2GiB', '1.5G' -> bytes (K/M/G/T are powers of 1024)."""
    m = _SIZE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (examples: 512M, 2G, 1073741824)")
    value, unit = float(m.group(1)), m.group(2).lower()
    return int(value * 1024 ** " kmgt".index(unit or " "))


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def add_store_parser(subparsers) -> argparse.ArgumentParser:
    """Register `store serve|ls|stats|rm` under an argparse subparsers object; handler in `func`."""
    p = subparsers.add_parser("store", help="the KV cache daemon and its documents",
                              description="Run the KV cache daemon, or inspect and manage its documents.")
    sub = p.add_subparsers(dest="store_cmd", metavar="{serve,ls,stats,rm,health}")
    sub.required = True

    s = sub.add_parser("serve", help="run the cache daemon until SIGTERM/SIGINT",
                       description="Run the cache daemon on a data directory until SIGTERM or SIGINT.")
    s.add_argument("--data", required=True, help="data directory (created if missing)")
    s.add_argument("--listen", action="append", default=None,
                   help="unix:///path.sock or HOST:PORT (default unix:///tmp/acre-store.sock); repeat to serve several")
    s.add_argument("--backend", choices=["zarr", "lmdb"], default=None,
                   help="disk tier of a new data directory (default lmdb; an existing one keeps its own)")
    s.add_argument("--ram-bytes", type=parse_bytes, default=None, help="RAM tier cap, e.g. 4G (default 1G)")
    s.add_argument("--disk-bytes", type=parse_bytes, default=0,
                   help="disk tier cap; least recently used unpinned documents are evicted (default 0: no cap)")
    s.add_argument("--workers", type=int, default=16, help="gRPC handler threads (default 16)")
    s.add_argument("--stream-idle", type=float, default=60.0,
                   help="cancel a streaming call that reads or sends nothing for this many seconds (default 60)")
    s.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls may run on at shutdown")
    s.add_argument("--no-shared", action="store_true", help="disable the same-host shared-memory fast path")
    s.add_argument("--no-data-plane", action="store_true",
                   help="serve Fetch over gRPC only (no plain data socket <unix socket>.data beside it)")
    s.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sec = s.add_argument_group("security (TCP listeners; docs/store.md)")
    sec.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TCP listeners over TLS")
    sec.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    sec.add_argument("--tls-client-ca", default=None, help="mutual TLS: accept only clients with a certificate "
                     "signed by this CA (PEM)")
    sec.add_argument("--token-file", default=None, help="every call must carry this bearer token (first line of "
                     "the file; default: $ACRE_STORE_TOKEN; health checks are exempt)")
    sec.add_argument("--insecure", action="store_true", help="allow a TCP listener with neither TLS nor a token")
    s.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (0: any)")
    s.add_argument("--metrics-host", default="127.0.0.1", help="address of --metrics-port (default 127.0.0.1)")
    s.add_argument("--object-store", default=None, metavar="s3://BUCKET/PREFIX",
                   help="shared S3-compatible bucket under RAM and disk: puts publish there, local misses read "
                        "through (credentials and region from the AWS environment variables)")
    s.add_argument("--object-store-endpoint", default=None, metavar="URL",
                   help="endpoint of an S3-compatible server (default: $AWS_ENDPOINT_URL, else AWS S3)")
    s.add_argument("--object-shard-bytes", type=parse_bytes, default=64 << 20,
                   help="chunks per shard object in the bucket: as many as fit in this size (default 64M)")
    s.add_argument("--object-parallel", type=int, default=16, metavar="N",
                   help="ranged GETs in flight per document read from the bucket (default 16)")
    s.add_argument("--object-recheck", type=float, default=30.0, metavar="SECONDS",
                   help="a document served from this daemon's copy is looked up in the bucket (one HEAD of its "
                        "manifest) when its last look is older than this, and dropped here if it was deleted "
                        "through another daemon (default 30; 0: at every Info/Fetch/L1 request)")
    s.add_argument("--object-land-quiet", type=float, default=3.0, metavar="SECONDS",
                   help="a document read through from the bucket is served at once; the background download of "
                        "the rest starts (and goes on) only while no request has read the document for this long, "
                        "so the first answers (their decoding too) do not share the host with it (default 3; 0: at once)")
    s.set_defaults(func=_guard(_serve))

    for name, helptext in (("ls", "list documents"), ("stats", "tier usage, caps and hit rates")):
        q = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        _common(q)
        q.set_defaults(func=_guard(_ls if name == "ls" else _stats))
        if name == "ls":
            q.add_argument("--server", default=os.environ.get("ACRE_SERVER") or None,
                           help="list the documents of a running `acre serve` at this URL instead "
                                "(default: $ACRE_SERVER; its API key from $ACRE_API_KEY)")
    h = sub.add_parser("health", help="exit 0 if the daemon is SERVING (for probes)",
                       description="Ask the daemon's grpc.health.v1 service; exit 0 when SERVING, 1 otherwise.")
    _common(h)
    h.set_defaults(func=_health)
    r = sub.add_parser("rm", help="delete a document", description="Delete a document from the store.")
    r.add_argument("doc", metavar="DOC", help="document id (or a unique prefix of it, 4+ characters, or its name)")
    _common(r)
    r.set_defaults(func=_guard(_rm))
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=os.environ.get("ACRE_STORE") or None,
                   help="daemon address (unix:///path.sock or HOST:PORT; a comma list routes documents over "
                        "several daemons); default: $ACRE_STORE, else the "
                        "embedded store under $ACRE_HOME/store")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--tls-ca", default=None, help="CA of the daemon's TLS certificate (default: $ACRE_STORE_TLS_CA)")
    p.add_argument("--token-file", default=None, help="bearer token for the daemon (default: $ACRE_STORE_TOKEN)")


def open_store(addr: str | None, args=None, **kw):
    """A client of the daemon at `addr` (TLS CA and token from `args`, else the environment), or the
    embedded store under $ACRE_HOME."""
    if addr:
        from . import connect
        from .auth import read_token
        return connect(addr, timeout=30.0, tls_ca=getattr(args, "tls_ca", None),
                       token=read_token(getattr(args, "token_file", None)), **kw)
    from . import EmbeddedStore
    return EmbeddedStore()


def _ls(args) -> int:
    if getattr(args, "server", None):
        from acre_serve.client import ServerClient

        docs = ServerClient(args.server).documents()  # the server's summaries: the columns below and more
        rows = [(d["doc_id"], d["n_tokens"], d["n_chunks"], d["nbytes"], d["pinned"], d["created"], d["name"])
                for d in docs]
        as_json = {"documents": docs}
    else:
        with open_store(args.store, args) as store:
            metas = store.list()
        rows = [(m.doc_id, m.layout.n_tokens, m.layout.n_chunks, m.nbytes, m.pinned, m.created, m.name)
                for m in metas]
        as_json = {"documents": [m.to_dict() for m in metas]}
    if args.json:
        print(json.dumps(as_json))
        return 0
    if not rows:
        print("no documents")
        return 0
    print(f"{'doc_id':<20} {'tokens':>8} {'chunks':>6} {'size':>10} {'pin':>3}  {'created':<19}  name")
    for doc_id, n_tokens, n_chunks, nbytes, pinned, created, name in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        print(f"{doc_id[:20]:<20} {n_tokens:>8} {n_chunks:>6} {_fmt_bytes(nbytes):>10} "
              f"{'yes' if pinned else '':>3}  {when:<19}  {printable(name)}")
    return 0


def printable(text: str) -> str:
    """`text` with its control (and other unprintable) characters escaped: a name cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def _stats(args) -> int:
    with open_store(args.store, args) as store:
        st = store.stats()
    if args.json:
        print(json.dumps(st.to_dict()))
        return 0
    ram, disk, ops = st.ram, st.disk, st.ops

    def rate(h, m):
        return f"{100 * h / (h + m):.1f}%" if h + m else "-"

    cap = lambda n: _fmt_bytes(n) if n else "no cap"  # noqa: E731
    print(f"store     {st.path} ({st.backend}), {st.n_docs} documents, {st.n_pinned} pinned")
    print(f"ram       {_fmt_bytes(ram.used_bytes)} of {cap(ram.capacity_bytes)}, {ram.entries} entries, "
          f"hit rate {rate(ram.hits, ram.misses)} ({ram.hits} hits, {ram.misses} misses), "
          f"{ram.evictions} evictions")
    print(f"disk      {_fmt_bytes(disk.used_bytes)} of {cap(disk.capacity_bytes)}, {disk.reads} reads, "
          f"{disk.evictions} evictions, {disk.checksum_failures} checksum failures")
    print(f"ops       {ops.puts} puts ({ops.put_noops} no-op, {ops.put_aborts} aborted), "
          f"{ops.fetched_chunks} chunks fetched ({_fmt_bytes(ops.fetched_bytes)}), {ops.deletes} deletes")
    if st.object_store:
        o = st.object_store
        print(f"bucket    {o['url']}: {o['gets']} GETs ({_fmt_bytes(o['get_bytes'])}), {o['puts']} PUTs "
              f"({_fmt_bytes(o['put_bytes'])}), {o['deletes']} deletes, {o['errors']} errors, "
              f"{o['read_throughs']} documents read through")
    return 0


def _rm(args) -> int:
    from .doc_ref import resolve_doc_id

    with open_store(args.store, args) as store:
        doc_id = resolve_doc_id(store, args.doc)
        store.delete(doc_id)
    if args.json:
        print(json.dumps({"deleted": doc_id}))
    else:
        print(f"deleted {doc_id}")
    return 0


def _health(args) -> int:
    """One line, and the exit status a probe wants: 0 SERVING, 1 anything else (unreachable included)."""
    from .errors import StoreError

    if not args.store:
        print("acre store: health needs --store (or $ACRE_STORE)", file=sys.stderr)
        return 2
    try:
        with open_store(args.store, args, connect_timeout=3.0, retries=0) as store:
            status = store.health()
    except (StoreError, OSError, ValueError) as e:
        status, detail = "UNREACHABLE", str(e)
    else:
        detail = ""
    if args.json:
        print(json.dumps({"store": args.store, "status": status, **({"error": detail} if detail else {})}))
    else:
        print(f"{args.store}: {status}" + (f" ({detail})" if detail else ""))
    return 0 if status == "SERVING" else 1


def _serve(args) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .server import DEFAULT_LISTEN, ServerConfig, StoreServer
    from .config import DEFAULT_RAM_BYTES, StoreConfig

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    store_cfg = StoreConfig(path=args.data, backend=args.backend,
                            ram_bytes=DEFAULT_RAM_BYTES if args.ram_bytes is None else args.ram_bytes,
                            disk_bytes=args.disk_bytes, object_store=_object_store(args))
    from .auth import read_token

    listen = args.listen or [DEFAULT_LISTEN]
    server = StoreServer(store_cfg, ServerConfig(listen=listen[0], extra_listen=tuple(listen[1:]), workers=args.workers,
                                                 stream_idle_s=args.stream_idle, grace_s=args.grace,
                                                 shared=not args.no_shared,
                                                 data_plane=not args.no_data_plane, tls_cert=args.tls_cert,
                                                 tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                                                 token=read_token(args.token_file), insecure=args.insecure,
                                                 metrics_port=args.metrics_port,
                                                 metrics_host=args.metrics_host)).start()
    planes = "".join(f" (data plane {dp.path})" for dp in server.data_planes)
    metrics = f", metrics on http://{args.metrics_host}:{server.metrics_port}/metrics" if server.metrics else ""
    print(f"acre store: serving {server.store.path} ({server.store.backend}) on {', '.join(server.addrs)}{planes}"
          f"{metrics}", flush=True)
    while not stop.wait(0.5):
        pass
    print("acre store: shutting down", file=sys.stderr, flush=True)
    server.stop()
    return 0


def _object_store(args):
    if not args.object_store:
        return None
    from .tiers.object_tier import ObjectStoreConfig
    return ObjectStoreConfig(args.object_store, endpoint=args.object_store_endpoint, shard_bytes=args.object_shard_bytes,
                             parallel=args.object_parallel, recheck_s=args.object_recheck,
                             land_quiet_s=args.object_land_quiet)


def _guard(handler):
    """The handler, with errors turned into one line on stderr and exit status 1."""

    def run(args) -> int:
        from .errors import StoreError

        try:
            return handler(args)
        except (StoreError, OSError, ValueError) as e:  # ValueError: an empty token file
            print(f"acre store: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acre", description="ACRE store commands")
    sub = parser.add_subparsers(dest="cmd", metavar="store")
    sub.required = True
    add_store_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
