"""StoreMetrics: the daemon's Prometheus metrics, one registry per daemon, served on `--metrics-port`.

Two kinds of numbers:
- RPC latencies and outcomes, measured by a server interceptor (`interceptor()`): a histogram per
  method and a counter per (method, status code).
- Everything the store already counts (tiers, evictions, checksum failures, puts, deletes, shared-memory
  leases, the data socket), read from `stats()` when Prometheus scrapes, so the store's hot paths carry no
  second set of counters and the two views can never disagree. Counters that the store keeps since it
  opened are exported as counters (they restart at zero with the daemon, as Prometheus expects).

Another tier (the object store) reports either as an `object` section of the stats (a dict, like `shared`)
or with `add_tier_source("object", fn)`; either is a dict with any of `reads`, `read_bytes`, `requests`,
`errors`, `docs`, `used_bytes`, exported under the `tier="object"` label of the same families
(docs/store.md lists every metric).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

PREFIX = "acre_store_"
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StoreMetrics:
    def __init__(self, stats: Callable[[], object]):
        """stats: returns the daemon's `StoreStats` (with its `shared` and `data_plane` sections)."""
        self.registry = CollectorRegistry()
        self._stats = stats
        self._tier_sources: dict[str, Callable[[], dict]] = {}
        self.rpc_seconds = Histogram(PREFIX + "rpc_duration_seconds", "Time from a call's start to its last "
                                     "message, per gRPC method", ["method"], buckets=RPC_BUCKETS,
                                     registry=self.registry)
        self.rpcs = Counter(PREFIX + "rpcs", "gRPC calls per method and status code", ["method", "code"],
                            registry=self.registry)
        self.registry.register(_StatsCollector(self))
        self._http = None

    def add_tier_source(self, tier: str, fn: Callable[[], dict]) -> None:
        """Numbers of another tier (e.g. "object"), read at scrape time (see the module docstring)."""
        self._tier_sources[tier] = fn

    def interceptor(self) -> grpc.ServerInterceptor:
        return _RpcTimer(self)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP on host:port (0: any free port); returns the port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_address[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def observe(self, method: str, code: grpc.StatusCode | None, seconds: float) -> None:
        self.rpc_seconds.labels(method).observe(seconds)
        self.rpcs.labels(method, (code or grpc.StatusCode.OK).name).inc()


class _RpcTimer(grpc.ServerInterceptor):
    """Times every call (streams: until their last message) and counts it with its status code."""

    def __init__(self, metrics: StoreMetrics):
        self.m = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        m = self.m

        def timed(behavior, streaming_response):
            if streaming_response:
                def run(request, context):
                    t0, code = time.perf_counter(), None
                    try:
                        yield from behavior(request, context)
                    except BaseException:
                        code = _code(context)
                        raise
                    finally:
                        m.observe(method, code or _code(context, ok=True), time.perf_counter() - t0)
            else:
                def run(request, context):
                    t0, code = time.perf_counter(), None
                    try:
                        return behavior(request, context)
                    except BaseException:
                        code = _code(context)
                        raise
                    finally:
                        m.observe(method, code or _code(context, ok=True), time.perf_counter() - t0)
            return run

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(timed(handler.unary_unary, False),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(timed(handler.unary_stream, True),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(timed(handler.stream_unary, False),
                                                        handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(timed(handler.stream_stream, True),
                                                     handler.request_deserializer, handler.response_serializer)


def _code(context, ok: bool = False) -> grpc.StatusCode:
    """The status the call ended with (set by abort), else OK for a normal return or UNKNOWN for an exception."""
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - older grpcio has no code()
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if ok else grpc.StatusCode.UNKNOWN


class _StatsCollector:
    """The store's own counters and sizes, read from `stats()` at each scrape."""

    def __init__(self, metrics: StoreMetrics):
        self.m = metrics

    def describe(self):
        return []  # families are produced at scrape time only (no stats() call at registration)

    def collect(self):
        try:
            st = self.m._stats()
        except Exception as e:  # noqa: BLE001 - a scrape must not take the daemon down
            log.warning("metrics: stats failed: %s", e)
            return
        # Another tier's numbers: a section of the stats named after it (e.g. StoreStats.object, a dict, if
        # the store grows one), the object-store tier's own section, or a source registered with
        # add_tier_source (which wins).
        extra = {t: dict(getattr(st, t)) for t in ("object",) if isinstance(getattr(st, t, None), dict)}
        if isinstance(getattr(st, "object_store", None), dict):
            extra["object"] = object_tier_numbers(st.object_store)
        for tier, fn in self.m._tier_sources.items():
            try:
                extra[tier] = fn() or {}
            except Exception as e:  # noqa: BLE001
                log.warning("metrics: %s tier numbers failed: %s", tier, e)
        ram, disk, ops = st.ram, st.disk, st.ops
        shared, dp = st.shared or {}, st.data_plane or {}

        def counter(name, doc, labels=(), rows=()):
            f = CounterMetricFamily(PREFIX + name, doc, labels=list(labels))
            for values, v in rows:
                f.add_metric(list(values), v)
            return f

        def gauge(name, doc, labels=(), rows=()):
            f = GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))
            for values, v in rows:
                f.add_metric(list(values), v)
            return f

        def per_tier(key):
            return [((t,), x[key]) for t, x in extra.items() if key in x]

        yield counter("tier_reads", "Chunk reads served by each tier (ram: RAM hits; disk: reads from the disk "
                      "tier, L1 parts included; object: reads from the object store)", ["tier"],
                      [(("ram",), ram.hits), (("disk",), disk.reads), *per_tier("reads")])
        yield counter("tier_read_bytes", "Bytes read from a tier below RAM (where the tier reports them)",
                      ["tier"], per_tier("read_bytes"))
        yield counter("ram_lookups", "RAM tier lookups by outcome", ["outcome"],
                      [(("hit",), ram.hits), (("miss",), ram.misses)])
        looked = ram.hits + ram.misses
        yield gauge("ram_hit_ratio", "RAM hits / lookups since the daemon started (0 before any lookup)",
                    rows=[((), ram.hits / looked if looked else 0.0)])
        yield counter("fetched_chunks", "Chunks served by Fetch (all transports)", rows=[((), ops.fetched_chunks)])
        yield counter("fetched_bytes", "Bytes of the chunks served by Fetch (all transports)",
                      rows=[((), ops.fetched_bytes)])
        yield counter("shared_chunks", "Chunks handed to same-host clients as shared-memory references",
                      rows=[((), shared.get("leases_granted", 0))])
        yield counter("data_socket_chunks", "Chunk frames sent on the same-host data socket",
                      rows=[((), dp.get("chunks", 0))])
        yield counter("data_socket_bytes", "Payload bytes sent on the same-host data socket",
                      rows=[((), dp.get("bytes", 0))])
        yield counter("data_socket_calls", "Fetch calls on the same-host data socket", rows=[((), dp.get("calls", 0))])
        yield counter("evictions", "Entries (ram) or documents (disk) evicted to make room", ["tier"],
                      [(("ram",), ram.evictions), (("disk",), disk.evictions)])
        yield counter("checksum_failures", "Stored bytes that failed their checksum (never served)",
                      rows=[((), disk.checksum_failures)])
        yield counter("puts", "Put calls by outcome", ["outcome"],
                      [(("stored",), ops.puts), (("noop",), ops.put_noops), (("aborted",), ops.put_aborts)])
        yield counter("deletes", "Documents deleted", rows=[((), ops.deletes)])
        yield counter("object_requests", "Requests to the object store", rows=[
            ((), extra.get("object", {}).get("requests", 0))])
        yield counter("object_errors", "Failed requests to the object store", rows=[
            ((), extra.get("object", {}).get("errors", 0))])
        yield gauge("documents", "Committed documents per tier", ["tier"],
                    [(("disk",), st.n_docs), *per_tier("docs")])
        yield gauge("pinned_documents", "Pinned documents", rows=[((), st.n_pinned)])
        yield gauge("used_bytes", "Bytes held per tier", ["tier"],
                    [(("ram",), ram.used_bytes), (("disk",), disk.used_bytes), *per_tier("used_bytes")])
        yield gauge("capacity_bytes", "Cap per tier (0: no cap)", ["tier"],
                    [(("ram",), ram.capacity_bytes), (("disk",), disk.capacity_bytes)])
        yield gauge("ram_entries", "Entries in the RAM tier", rows=[((), ram.entries)])
        yield gauge("leases_in_flight", "Shared-memory leases granted and not yet ended",
                    rows=[((), shared.get("leases_active", 0))])
        yield gauge("data_socket_connections", "Open connections on the data socket",
                    rows=[((), dp.get("connections", 0))])


def object_tier_numbers(section: dict) -> dict:
    """The object-store tier's stats section (`StoreStats.object_store`: gets, get_bytes, puts, put_bytes,
    deletes, errors, read_throughs, ...) in the terms of the tier families: documents read through,
    bytes fetched from the bucket, requests made, failed requests."""
    return {"reads": section.get("read_throughs", 0), "read_bytes": section.get("get_bytes", 0),
            "requests": sum(section.get(k, 0) for k in ("gets", "heads", "puts", "deletes")),
            "errors": section.get("errors", 0)}
