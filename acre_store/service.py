"""StoreServicer: the gRPC face of a `Store`. Thin: it decodes frames and delegates.

Every `StoreError` becomes its status code (`errors.py`); anything else is logged and sent as INTERNAL.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from typing import Iterator

import grpc
import numpy as np

from ._proto import store_pb2 as pb
from ._proto import store_pb2_grpc
from .errors import InvalidArgument, StoreError
from .put_session import PutSession
from .record import TensorSpec
from .store import Store
from .wire import (FETCH_FRAME_BYTES, MAX_FRAME_BYTES, encode_fetch_frame, layout_to_pb, meta_from_pb, meta_to_pb,
                   spec_from_pb, spec_to_pb)

log = logging.getLogger(__name__)


def _abort(context, e: BaseException):
    if not context.is_active():  # the client went away (or the deadline passed): nobody to tell
        log.info("call ended early: %s", e)
        return None
    if isinstance(e, StoreError):
        context.abort(e.code, str(e))
    log.exception("internal error")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")


def unary(fn):
    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except Exception as e:  # noqa: BLE001 - mapped to a status code
            _abort(context, e)
    return wrapper


def streaming(fn):
    """A response-streaming handler, admitted by the servicer's StreamGuard (each sent message is progress)."""
    @functools.wraps(fn)
    def wrapper(self, request, context):
        stream = None
        try:
            stream = self.admit(context)
            for msg in fn(self, request, context):
                yield msg
                if stream is not None:
                    stream.last = time.monotonic()
        except Exception as e:  # noqa: BLE001 - mapped to a status code
            _abort(context, e)
        finally:
            if stream is not None:
                self.guard.done(stream)
    return wrapper


class _Part:
    """Bytes of one part (chunk or L1 array) arriving in ordered pieces."""

    def __init__(self, nbytes: int):
        self.buf = np.empty(nbytes, np.uint8)
        self.received = 0

    def add(self, offset: int, data: bytes, what: str) -> bool:
        """Append a piece; True once complete."""
        if len(data) > MAX_FRAME_BYTES:
            raise InvalidArgument(f"{what}: frame of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
        if offset != self.received:
            raise InvalidArgument(f"{what}: piece at offset {offset}, expected {self.received}")
        end = offset + len(data)
        if end > self.buf.nbytes:
            raise InvalidArgument(f"{what}: {end} bytes sent, the layout says {self.buf.nbytes}")
        self.buf[offset:end] = np.frombuffer(data, np.uint8)
        self.received = end
        return end == self.buf.nbytes


class _PutAssembler:
    """Turns a Put stream's frames into `PutSession` calls."""

    def __init__(self, session: PutSession, specs: list[TensorSpec]):
        self.session = session
        self.specs = {s.name: s for s in specs}
        self.l1_parts: dict[str, _Part] = {}
        self.chunk: _Part | None = None

    def l1(self, f: pb.L1Frame) -> None:
        spec = self.specs.get(f.name)
        if spec is None:
            raise InvalidArgument(f"L1 part {f.name!r} is not declared in the header")
        part = self.l1_parts.setdefault(f.name, _Part(spec.nbytes))
        if part.add(f.offset, f.data, f"L1 part {f.name!r}"):
            arr = part.buf.view(spec.np_dtype).reshape(spec.shape)
            self.session.add_l1(f.name, arr, crc=spec.crc32c)

    def chunk_frame(self, f: pb.ChunkFrame) -> None:
        c, L = self.session.next_chunk, self.session.layout
        if f.chunk_id != c:
            raise InvalidArgument(f"chunk {f.chunk_id} out of order: expected chunk {c}")
        if c >= L.n_chunks:
            raise InvalidArgument(f"too many chunks: the layout has {L.n_chunks}")
        if self.chunk is None:
            self.chunk = _Part(L.chunk_nbytes(c))
        if self.chunk.add(f.offset, f.data, f"chunk {c}"):
            arr = self.chunk.buf.view(L.np_dtype).reshape(L.chunk_shape(c))
            self.chunk = None
            self.session.add_chunk(c, arr, crc=f.crc32c)


class StoreServicer(store_pb2_grpc.StoreServicer):
    def __init__(self, store: Store, shared=None, guard=None):
        self.store = store
        self.shared = shared  # SharedArena for same-host clients, or None
        self.guard = guard  # StreamGuard bounding streaming calls, or None
        self.data_planes: list = []  # DataPlaneServers serving fetch_chunks (set by the server)

    def admit(self, context):
        """A streaming call starts: its StreamGuard entry (None without a guard); UNAVAILABLE when full."""
        return self.guard.admit(context) if self.guard is not None else None

    @unary
    def Put(self, request_iterator, context):
        stream = self.admit(context)
        try:
            return self._put(_progressing(request_iterator, stream), context)
        finally:
            if stream is not None:
                self.guard.done(stream)

    def _put(self, request_iterator, context):
        it = iter(request_iterator)
        first = next(it, None)
        if first is None or first.WhichOneof("frame") != "header":
            raise InvalidArgument("a Put stream must start with a header")
        meta = meta_from_pb(first.header.meta)
        specs = [spec_from_pb(s) for s in first.header.l1]
        session = self.store.begin_put(meta, specs)
        if session is None:
            rec = self.store.record(meta.doc_id)
            return pb.PutResponse(meta=meta_to_pb(rec.meta, rec.l1), created=False)
        try:
            asm = _PutAssembler(session, specs)
            ended = False
            for req in it:
                kind = req.WhichOneof("frame")
                if ended:
                    raise InvalidArgument("frames after the end marker")
                if kind == "chunk":
                    asm.chunk_frame(req.chunk)
                elif kind == "l1":
                    asm.l1(req.l1)
                elif kind == "end":
                    if req.end.n_chunks != session.next_chunk:
                        raise InvalidArgument(f"end marker says {req.end.n_chunks} chunks, {session.next_chunk} arrived")
                    ended = True
                else:
                    raise InvalidArgument("a Put stream has exactly one header")
            if not ended:
                raise InvalidArgument("Put stream ended without its end marker; nothing was stored")
            if not context.is_active():
                raise InvalidArgument("client went away before the commit; nothing was stored")
            stored = session.commit()
        except BaseException:
            session.abort()
            raise
        return pb.PutResponse(meta=meta_to_pb(stored, self.store.record(stored.doc_id, touch=False).l1), created=True)

    @unary
    def Info(self, request, context):
        rec = self.store.record(request.doc_id, recheck=True)
        return meta_to_pb(rec.meta, rec.l1)

    @streaming
    def GetL1(self, request, context):
        rec = self.store.record(request.doc_id)
        parts = self.store.l1(request.doc_id, list(request.names) or None)
        for name, arr in parts.items():
            spec = rec.l1_spec(name)
            data = memoryview(np.require(arr, requirements="C").reshape(-1).view(np.uint8))
            for off in range(0, max(len(data), 1), MAX_FRAME_BYTES):
                yield pb.L1Frame(name=name, offset=off, data=bytes(data[off:off + MAX_FRAME_BYTES]),
                                 spec=spec_to_pb(spec) if off == 0 else None)

    def fetch_chunks(self, request, client=None) -> Iterator[tuple[pb.FetchFrame, memoryview]]:
        """Per requested chunk, in order: its frame header (offset 0, layout, checksums; a SharedRef with a
        fresh lease on the same-host fast path) and its payload (a view of the cached bytes; empty when
        shared). Shared by the gRPC Fetch and the same-host data plane. `client`: who asks, when it is on
        this host (a pid, or a unix-socket peer); None (a remote client) never gets shared memory."""
        if request.release and self.shared is not None:
            self.shared.release(list(request.release))
        layers = (request.layer_start, request.layer_end) if request.has_layers else None
        rec = self.store.record(request.doc_id, touch=False)
        it = self.store.fetch(request.doc_id, list(request.chunk_ids), layers)
        l0, l1 = layers or (0, rec.meta.layout.n_layers)
        layout_pb = layout_to_pb(rec.meta.layout)
        shared = self.shared if (request.shared_ok and client is not None) else None
        for c, view in it:
            head = pb.FetchFrame(chunk_id=c, layer_start=l0, layer_end=l1, n_tokens=view.shape[3],
                                 chunk_bytes=view.nbytes, layer_crc32c=rec.chunk_crcs[c][l0:l1], layout=layout_pb)
            ref = shared.lease(rec.doc_id, c, l0, l1, client) if shared is not None else None
            if ref is not None:
                head.shared.CopyFrom(ref)
                yield head, memoryview(b"")
            else:
                yield head, memoryview(view.reshape(-1).view(np.uint8))

    def client_gone(self, client) -> None:
        """A same-host client went away: its leases end."""
        if self.shared is not None:
            self.shared.end_client(client)

    def unsent(self, frame: pb.FetchFrame) -> None:
        """`frame` never reached the client: its lease ends now. (A lease whose frame went out but may not
        have arrived is left to expire: the client may be reading that file.)"""
        if frame.HasField("shared") and self.shared is not None:
            self.shared.release([frame.shared.lease])

    @streaming
    def Fetch(self, request, context):
        for head, data in self.fetch_chunks(request, local_peer(context)):
            if head.HasField("shared"):
                yield head
                continue
            # Pre-encoded (wire.encode_fetch_frame): the payload is copied once, from the cache into the message.
            yield encode_fetch_frame(head, data[:FETCH_FRAME_BYTES])
            for off in range(FETCH_FRAME_BYTES, len(data), FETCH_FRAME_BYTES):
                more = pb.FetchFrame(chunk_id=head.chunk_id, layer_start=head.layer_start,
                                     layer_end=head.layer_end, n_tokens=head.n_tokens,
                                     chunk_bytes=head.chunk_bytes, offset=off)
                yield encode_fetch_frame(more, data[off:off + FETCH_FRAME_BYTES])

    @unary
    def Prefetch(self, request, context):
        self.store.prefetch(request.doc_id, None if request.all_chunks else list(request.chunk_ids))
        return pb.PrefetchResponse()

    @unary
    def Release(self, request, context):
        if self.shared is not None and local_peer(context) is not None:  # remote clients hold no leases
            self.shared.release(list(request.leases))
        return pb.ReleaseResponse()

    @unary
    def List(self, request, context):
        # Pages bounded in count and bytes, so that any number of documents (or large metadata) lists
        # under the message size limit. The token is the last sent document's (created, doc_id), the
        # list's sort key: a page starts after it, whatever was added or deleted meanwhile.
        size = min(request.page_size or LIST_PAGE_DOCS, LIST_PAGE_DOCS)
        after = _list_key(request.page_token) if request.page_token else None
        resp, nbytes = pb.ListResponse(), 0
        for m in self.store.list():
            if after is not None and (m.created, m.doc_id) <= after:
                continue
            doc = meta_to_pb(m)
            if len(resp.docs) >= size or (resp.docs and nbytes + doc.ByteSize() > LIST_PAGE_BYTES):
                last = resp.docs[-1]
                resp.next_page_token = f"{last.created!r}/{last.doc_id}"
                break
            resp.docs.append(doc)
            nbytes += doc.ByteSize()
        return resp

    @unary
    def Delete(self, request, context):
        self.store.delete(request.doc_id)
        return pb.DeleteResponse()

    @unary
    def Pin(self, request, context):
        self.store.pin(request.doc_id, request.pinned)
        return pb.PinResponse()

    @unary
    def Stats(self, request, context):
        stats = self.daemon_stats()
        if local_peer(context) is None:  # a remote client learns no local paths
            dp = stats.data_plane
            stats = dataclasses.replace(stats, path="", shared=None,
                                        data_plane={k: v for k, v in (dp or {}).items() if k != "paths"} or None)
        return pb.StatsResponse(json=json.dumps(stats.to_dict()))

    def daemon_stats(self):
        """The store's stats with the daemon's transport sections (also read by metrics.py)."""
        shared = self.shared.stats() if self.shared is not None else None
        data_plane = None
        if self.data_planes:
            planes = [dp.stats() for dp in self.data_planes]
            data_plane = {"paths": [p.pop("path") for p in planes],
                          **{k: sum(p[k] for p in planes) for k in planes[0]}}
        return dataclasses.replace(self.store.stats(), shared=shared, data_plane=data_plane,
                                   streams=self.guard.stats() if self.guard is not None else None)


LIST_PAGE_DOCS = 1000
LIST_PAGE_BYTES = 1 << 20


def _list_key(token: str) -> tuple[float, str]:
    created, _, doc_id = token.partition("/")
    try:
        return float(created), doc_id
    except ValueError:
        raise InvalidArgument(f"bad List page token {token!r}") from None


def _progressing(requests, stream):
    """The requests, each one marking progress of the guarded stream."""
    for req in requests:
        if stream is not None:
            stream.last = time.monotonic()
        yield req


def local_peer(context) -> str | None:
    """The caller's peer name if it came through a unix socket (so it is on this host), else None."""
    peer = context.peer() or ""
    return peer if peer.startswith("unix:") else None


def _serialize_fetch_frame(frame) -> bytes:
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


def add_store_servicer(servicer: StoreServicer, server) -> None:
    """`store_pb2_grpc.add_StoreServicer_to_server`, except that Fetch may yield pre-encoded frames (bytes)."""
    handlers: dict = {}

    class _Collect:  # receives the generated handler table
        def add_generic_rpc_handlers(self, generic):
            pass

        def add_registered_method_handlers(self, service, table):
            handlers.update(table)

    store_pb2_grpc.add_StoreServicer_to_server(servicer, _Collect())
    fetch = handlers["Fetch"]
    handlers["Fetch"] = grpc.unary_stream_rpc_method_handler(
        fetch.unary_stream, request_deserializer=fetch.request_deserializer,
        response_serializer=_serialize_fetch_frame)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


SERVICE = "acre.store.v1.Store"
