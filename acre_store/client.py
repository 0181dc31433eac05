"""StoreClient: the gRPC client of the cache daemon, with the same interface as `EmbeddedStore`.

Every call has a deadline (`timeout` for unary calls, `stream_timeout` for Put/GetL1/Fetch); calls
that are safe to repeat are retried with exponential backoff while the daemon is UNAVAILABLE. Status
codes come back as the same exceptions the embedded store raises. Every chunk is checked against its
per-layer CRC32C on arrival.
"""
from __future__ import annotations

import collections
import functools
import json
import logging
import os
import time
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import grpc
import numpy as np

from ._proto import store_pb2 as pb
from ._proto import store_pb2_grpc
from .checksum import bad_layers, crc32c
from .api import StoreAPI
from .auth import TLS_CA_ENV, client_channel, read_token
from .dataplane import DataPlaneBroken, DataPlaneClient, data_path, unix_path
from .errors import DataLoss, InvalidArgument, StoreError, StoreUnavailable, error_for_code
from .map_cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, MapCache
from .record import TensorSpec
from .shared import SharedGone
from .stats import StoreStats
from .types import DocMeta
from .wire import (CHANNEL_OPTIONS, MAX_FRAME_BYTES, decode_fetch_frame, layout_from_pb, meta_from_pb, meta_to_pb,
                   spec_from_pb, spec_to_pb)

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


def normalize_addr(addr: str) -> str:
    """'unix:///p', 'unix:p', '/p' (a path) or 'host:port' -> a gRPC target."""
    if addr.startswith("/"):
        return "unix://" + addr
    return addr


class StoreClient(StoreAPI):
    def __init__(self, addr: str, timeout: float = 30.0, stream_timeout: float = 600.0, connect_timeout: float = 5.0,
                 retries: int = 4, backoff_s: float = 0.1, shared: bool = True, writable: bool = False,
                 data_plane: bool = True, tls_ca: str | None = None, token: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 map_cache_bytes: int = DEFAULT_MAX_BYTES, map_cache_files: int = DEFAULT_MAX_FILES):
        """tls_ca: the CA of the daemon's TLS certificate (default $ACRE_STORE_TLS_CA; none: plain channel);
        tls_cert/tls_key: this client's certificate for mutual TLS; token: sent as `authorization: Bearer`
        on every call (default $ACRE_STORE_TOKEN). See auth.py. map_cache_bytes/map_cache_files: the most
        the same-host fast path keeps mapped of the daemon's shared files for reuse (map_cache.py; 0: none)."""
        self.addr = normalize_addr(addr)
        tls_ca = tls_ca or os.environ.get(TLS_CA_ENV) or None
        token = token or read_token()
        self.timeout, self.stream_timeout = timeout, stream_timeout
        self.retries, self.backoff_s = retries, backoff_s
        # SingleThreadedUnaryStream: a Fetch call does not start a thread of its own (measured: ~0.3 ms a call).
        self._channel, self._raw_channel = client_channel(
            self.addr, CHANNEL_OPTIONS + [("SingleThreadedUnaryStream", 1)], tls_ca, token, tls_cert, tls_key)
        self._stub = store_pb2_grpc.StoreStub(self._channel)
        # Fetch frames arrive as raw bytes (wire.decode_fetch_frame): the payload is viewed, not copied.
        self._fetch_raw = self._channel.unary_stream("/acre.store.v1.Store/Fetch",
                                                     request_serializer=pb.FetchRequest.SerializeToString,
                                                     response_deserializer=None)
        # writable=False (default): fetched arrays are read-only views (of a shared-memory mapping on the
        # fast path, of the received message on the socket); True: each one is the caller's own writable copy.
        self.writable = writable
        try:
            grpc.channel_ready_future(self._raw_channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            hint = (" or is its certificate not signed by --tls-ca, or does it want a client certificate?" if tls_ca else
                    " or does it want TLS (--tls-ca / $ACRE_STORE_TLS_CA)?" if unix_path(self.addr) is None else "")
            raise StoreUnavailable(f"cannot reach the store daemon at {self.addr} "
                                   f"(no answer within {connect_timeout:g}s; is `acre store serve` running{hint})") from None
        # Same-host fast path (shared.py): offered over a unix socket only (the daemon is then on this host).
        self.shared = shared and self.addr.startswith("unix:")
        # Same-host data plane (dataplane.py): Fetch over the plain socket next to the daemon's unix socket;
        # gRPC carries Fetch when it is missing or broken.
        path = unix_path(self.addr)
        self._dp = DataPlaneClient(data_path(path), stream_timeout, connect_timeout, token) if (data_plane and path) else None
        # Leases whose chunk is done with (copied, or its call's arrays are garbage), ended with the next Fetch
        # (or a Release call when many pile up). A deque: the arrays' finalizers append from any thread.
        self._done_leases: collections.deque[int] = collections.deque()
        # Read-only mappings of the daemon's shared files, reused by later calls (map_cache.py).
        self._maps = MapCache(map_cache_bytes, map_cache_files)

    # -- plumbing -------------------------------------------------------------------------------

    def _error(self, e: grpc.RpcError) -> StoreError:
        code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return StoreUnavailable(f"store daemon at {self.addr} is unavailable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreUnavailable(f"store daemon at {self.addr} did not answer in time ({details})")
        return error_for_code(code, details)

    def _retry(self, attempt: Callable[[], T], retryable: Callable[[], bool] = lambda: True) -> T:
        """`attempt()`, run again while it fails with UNAVAILABLE and `retryable()` holds: up to `retries`
        more times, after `backoff_s`, then twice as long each time. Any other gRPC failure, or the last,
        raises its StoreError; other exceptions pass through."""
        delay, retried = self.backoff_s, 0
        while True:
            try:
                return attempt()
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or retried >= self.retries or not retryable():
                    raise self._error(e) from None
            log.debug("%s unavailable, retrying in %.2fs", self.addr, delay)
            time.sleep(delay)
            delay *= 2
            retried += 1

    def _call(self, method, request, timeout: float | None = None):
        """A unary call with a deadline, retried with backoff while the daemon is UNAVAILABLE."""
        return self._retry(lambda: method(request, timeout=timeout or self.timeout))

    # -- API ------------------------------------------------------------------------------------

    def put(self, meta: DocMeta, l1: Mapping[str, np.ndarray], chunks: Iterable[np.ndarray]) -> DocMeta:
        """Stream a document to the daemon; chunks [n_layers, 2, n_kv_heads, len_c, head_dim] are sent as they come."""
        meta.validate()
        l1 = {name: np.require(arr, requirements="C") for name, arr in l1.items()}
        specs = []
        for name, arr in l1.items():
            s = TensorSpec.of(name, arr)
            specs.append(TensorSpec(s.name, s.dtype, s.shape, crc32c(arr)))
        header = pb.PutRequest(header=pb.PutHeader(meta=meta_to_pb(meta), l1=[spec_to_pb(s) for s in specs]))
        L = meta.layout
        state = {"pulled": False, "error": None}
        chunk_iter = iter(chunks)

        def requests():
            yield header
            for name, arr in l1.items():
                data = memoryview(arr.reshape(-1).view(np.uint8))
                for off in range(0, max(len(data), 1), MAX_FRAME_BYTES):
                    yield pb.PutRequest(l1=pb.L1Frame(name=name, offset=off, data=bytes(data[off:off + MAX_FRAME_BYTES])))
            n = 0
            try:
                for chunk in chunk_iter:
                    state["pulled"] = True
                    if n >= L.n_chunks:
                        raise InvalidArgument(f"too many chunks: the layout has {L.n_chunks}")
                    if not isinstance(chunk, np.ndarray) or chunk.shape != L.chunk_shape(n) or chunk.dtype != L.np_dtype:
                        got = f"{chunk.dtype}{list(chunk.shape)}" if isinstance(chunk, np.ndarray) else type(chunk).__name__
                        raise InvalidArgument(f"chunk {n}: got {got}, layout wants {L.np_dtype}{list(L.chunk_shape(n))}")
                    chunk = np.ascontiguousarray(chunk)
                    crc = crc32c(chunk)
                    data = memoryview(chunk.reshape(-1).view(np.uint8))
                    for off in range(0, len(data), MAX_FRAME_BYTES):
                        yield pb.PutRequest(chunk=pb.ChunkFrame(chunk_id=n, offset=off, crc32c=crc,
                                                                data=bytes(data[off:off + MAX_FRAME_BYTES])))
                    n += 1
            except Exception as e:  # noqa: BLE001 - reported after the call; the stream ends without its end marker
                state["error"] = e
                return
            yield pb.PutRequest(end=pb.PutEnd(n_chunks=n))

        def attempt():
            try:
                return self._stub.Put(requests(), timeout=self.stream_timeout)
            except grpc.RpcError:
                if state["error"] is not None:  # the chunks' fault, not the call's
                    raise state["error"] from None
                raise

        # Retried only while no chunk was taken from `chunks` (it cannot be read twice).
        resp = self._retry(attempt, retryable=lambda: not state["pulled"])
        if state["error"] is not None:  # the daemon may have answered "already stored" first
            raise state["error"]
        return meta_from_pb(resp.meta)

    def info(self, doc_id: str) -> DocMeta:
        return meta_from_pb(self._call(self._stub.Info, pb.InfoRequest(doc_id=doc_id)))

    def get_l1(self, doc_id: str) -> dict[str, np.ndarray]:
        return self._retry(lambda: self._get_l1(doc_id))

    def _get_l1(self, doc_id: str) -> dict[str, np.ndarray]:
        out, spec, buf = {}, None, None
        for f in self._stub.GetL1(pb.GetL1Request(doc_id=doc_id), timeout=self.stream_timeout):
            if f.offset == 0:
                spec = spec_from_pb(f.spec)
                buf = np.empty(spec.nbytes, np.uint8)
            data = f.data
            buf[f.offset:f.offset + len(data)] = np.frombuffer(data, np.uint8)
            if f.offset + len(data) == spec.nbytes:
                if crc32c(buf) != spec.crc32c:
                    raise DataLoss(f"L1 part {spec.name!r} of {doc_id} arrived corrupted (checksum mismatch)")
                out[spec.name] = buf.view(spec.np_dtype).reshape(spec.shape)
        return out

    def fetch(self, doc_id: str, chunk_ids: Sequence[int], layers: tuple[int, int] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (chunk_id, [l1-l0, 2, n_kv_heads, len_c, head_dim]) in request order as each arrives."""
        req = pb.FetchRequest(doc_id=doc_id, chunk_ids=[int(c) for c in chunk_ids], shared_ok=self.shared)
        req.release.extend(self._take_done_leases())
        if layers is not None:
            req.has_layers, req.layer_start, req.layer_end = True, int(layers[0]), int(layers[1])
        return self._fetch(req)

    def _fetch(self, req: pb.FetchRequest, data_plane: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        # Retry only a call that yielded nothing (chunks must come once, in order): each attempt is started
        # and its first chunk taken inside `_retry`; an error after that is not retried.
        def attempt():
            chunks = self._fetch_once(req, data_plane)
            return next(chunks, _END), chunks

        try:
            first, chunks = self._retry(attempt)
        except DataPlaneBroken as e:
            # The data socket is missing or broke before the first frame (so nothing was yielded): this
            # call, and the next second's, go over gRPC (with all its retries). After a frame it raises
            # StoreUnavailable instead.
            log.debug("data socket of %s unusable (%s); Fetch over gRPC", self.addr, e)
            self._dp.mark_down()
            # NOTE: data_plane=False: with the daemon gone, gRPC's retries outlast the data plane's pause,
            # and going back to it would fall back again, for ever.
            yield from self._fetch(req, data_plane=False)
            return
        if first is _END:
            return
        try:
            yield first
            yield from chunks
        except grpc.RpcError as e:
            raise self._error(e) from None
        finally:
            chunks.close()

    def _fetch_once(self, req: pb.FetchRequest, data_plane: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """One attempt of a Fetch call: (chunk_id, array) as each one is complete."""
        leases: list[int] = []
        frames = None
        try:
            frames = self._frames(req, leases, data_plane)
            yield from self._assemble(frames, req, leases)
        finally:
            if frames is not None:
                frames.close()  # a consumer that stopped early: the leases on their way are collected
            self._finished(leases)

    def _frames(self, req: pb.FetchRequest, leases: list[int], data_plane: bool = True
                ) -> Iterator[tuple[pb.FetchFrame, object, bool]]:
        """(frame header, payload, payload is a fresh array owned by the caller) of one Fetch call."""
        if data_plane and self._dp is not None and self._dp.usable():
            gen = self._dp.fetch(req, leases)
            try:
                for f, buf in gen:
                    yield f, buf, True
            finally:
                gen.close()
            return
        call = self._fetch_raw(req, timeout=self.stream_timeout)
        complete = False
        try:
            for raw in call:
                try:
                    f, data = decode_fetch_frame(raw)
                except Exception as e:  # noqa: BLE001 - a frame protobuf cannot parse
                    raise DataLoss(f"malformed Fetch frame for {req.doc_id}: {e}") from None
                yield f, data, False
            complete = True
        finally:
            if not complete:
                self._drain(call, leases)

    @staticmethod
    def _drain(call, leases: list[int]) -> None:
        """A gRPC Fetch that ended early (the consumer stopped, or an error): collect the leases of shared
        frames already on their way, then cancel (the daemon also ends the leases of frames it had not sent)."""
        try:
            for raw in call:
                f, _ = decode_fetch_frame(raw)
                if not f.HasField("shared"):
                    break  # payload frames: not worth receiving
                leases.append(f.shared.lease)
        except grpc.RpcError:
            pass
        call.cancel()

    def _assemble(self, frames, req: pb.FetchRequest, leases: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        arr = view = L = None
        crcs: list[int] = []
        for f, data, owned in frames:
            if data is None:
                data = b""
            if f.offset == 0:
                if L is None:  # one document per call: every frame carries its layout
                    L = layout_from_pb(f.layout)
                shape = (f.layer_end - f.layer_start, 2, L.n_kv_heads, f.n_tokens, L.head_dim)
                dtype = L.np_dtype
                arr = view = None
                crcs = list(f.layer_crc32c)
            if f.HasField("shared"):
                ref = f.shared
                try:
                    if self.writable:
                        leases.append(ref.lease)  # ends once copied
                        arr = np.empty(shape, dtype)
                        self._maps.copy(ref, arr.reshape(-1).view(np.uint8))
                    else:  # the lease lasts as long as this call's arrays over the (cached) mapping
                        arr = self._maps.view(ref, dtype, shape, functools.partial(self._done_leases.append, ref.lease))
                except SharedGone as e:  # deleted meanwhile, or not our host after all: use the socket
                    if not self.writable:
                        leases.append(ref.lease)
                    log.debug("shared read failed (%s); chunk %d over the socket", e, f.chunk_id)
                    one = pb.FetchRequest(doc_id=req.doc_id, chunk_ids=[f.chunk_id], has_layers=True,
                                          layer_start=f.layer_start, layer_end=f.layer_end, shared_ok=False)
                    yield from self._fetch(one)
                    continue
                # Shared files hold bytes the daemon verified when it read them from disk, and are never
                # rewritten: no transport to check.
                yield f.chunk_id, arr
                continue
            if f.offset == 0 and len(data) == f.chunk_bytes and owned:
                arr = data.view(dtype).reshape(shape)  # received straight into its own array (data plane)
            elif f.offset == 0 and len(data) == f.chunk_bytes and not self.writable:
                arr = np.frombuffer(data, dtype).reshape(shape)  # a view of the received message
                if not arr.flags.aligned:
                    arr = arr.copy()
            else:
                if view is None:
                    arr = np.empty(shape, dtype)
                    view = arr.reshape(-1).view(np.uint8)
                if f.offset + len(data) > view.nbytes:
                    raise DataLoss(f"chunk {f.chunk_id} of {req.doc_id}: more bytes than announced")
                view[f.offset:f.offset + len(data)] = np.frombuffer(data, np.uint8)
            if f.offset + len(data) == f.chunk_bytes:
                # Socket payload is checked layer by layer.
                bad = bad_layers(arr, crcs, 0)
                if bad:
                    raise DataLoss(f"chunk {f.chunk_id} of {req.doc_id} arrived corrupted "
                                   f"(layers {[f.layer_start + b for b in bad]} fail their checksum)")
                if not self.writable:
                    arr.flags.writeable = False
                yield f.chunk_id, arr

    def prefetch(self, doc_id: str, chunk_ids: Sequence[int] | None = None) -> None:
        req = pb.PrefetchRequest(doc_id=doc_id, all_chunks=chunk_ids is None,
                                 chunk_ids=[] if chunk_ids is None else [int(c) for c in chunk_ids])
        self._call(self._stub.Prefetch, req)

    def release_leases(self) -> None:
        """End now the same-host leases of chunks already done with (copied, or whose arrays are garbage).
        They end with the next Fetch anyway; a client that goes idle calls this so that they do not pin the
        daemon's RAM entries meanwhile (they would expire after 60 s). It also forgets its mappings of
        files the daemon has unlinked since (map_cache.py), whose pages would stay in /dev/shm meanwhile."""
        self._release(self._take_done_leases())
        self._maps.drop_unlinked()

    def _take_done_leases(self) -> list[int]:
        out = []
        try:
            while True:
                out.append(self._done_leases.popleft())
        except IndexError:
            return out

    def _finished(self, leases: list[int]) -> None:
        """These leases' bytes are copied: end them with the next Fetch, or now if many are waiting."""
        self._done_leases.extend(leases)
        if len(self._done_leases) >= 256:
            self._release(self._take_done_leases())

    def _release(self, leases: list[int]) -> None:
        """End same-host leases (they also expire on their own if this fails)."""
        if leases:
            try:
                self._stub.Release(pb.ReleaseRequest(leases=list(leases)), timeout=self.timeout)
            except grpc.RpcError as e:
                log.debug("release of %d leases failed: %s", len(leases), e)

    def list(self) -> list[DocMeta]:
        """Every document, oldest first (the daemon sends pages; this follows them)."""
        out, token = [], ""
        while True:
            page = self._call(self._stub.List, pb.ListRequest(page_token=token))
            out += [meta_from_pb(m) for m in page.docs]
            token = page.next_page_token
            if not token:
                return out

    def delete(self, doc_id: str) -> None:
        self._call(self._stub.Delete, pb.DeleteRequest(doc_id=doc_id))

    def pin(self, doc_id: str, pinned: bool = True) -> None:
        self._call(self._stub.Pin, pb.PinRequest(doc_id=doc_id, pinned=pinned))

    def stats(self) -> StoreStats:
        return StoreStats.from_dict(json.loads(self._call(self._stub.Stats, pb.StatsRequest()).json))

    def health(self) -> str:
        """'SERVING' or 'NOT_SERVING' (grpc.health.v1)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service="acre.store.v1.Store"), timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def close(self) -> None:
        self.release_leases()
        if self._dp is not None:
            self._dp.close()
        self._channel.close()
        self._maps.close()
