"""Malformed Put streams sent with the raw stub: each gets the right status and leaves the store consistent."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from acre_store._proto import store_pb2 as pb
from acre_store._proto import store_pb2_grpc
from acre_store.checksum import crc32c
from acre_store.record import TensorSpec
from acre_store.wire import MAX_FRAME_BYTES, meta_to_pb, spec_to_pb

from .support import TINY, assert_doc_equal, make_doc

DOC = make_doc(TINY, seed=5)
OTHER = make_doc(TINY, seed=6)


def header(doc=DOC, **meta_changes):
    m = meta_to_pb(doc.meta)
    for k, v in meta_changes.items():
        if k.startswith("layout_"):
            setattr(m.layout, k[len("layout_"):], v)
        else:
            setattr(m, k, v)
    specs = [spec_to_pb(TensorSpec(n, a.dtype.name, a.shape, crc32c(a))) for n, a in doc.l1.items()]
    return pb.PutRequest(header=pb.PutHeader(meta=m, l1=specs))


def l1_frames(doc=DOC):
    return [pb.PutRequest(l1=pb.L1Frame(name=n, offset=0, data=a.tobytes())) for n, a in doc.l1.items()]


def chunk_frames(doc=DOC, n=None):
    return [pb.PutRequest(chunk=pb.ChunkFrame(chunk_id=i, offset=0, data=c.tobytes(), crc32c=crc32c(c)))
            for i, c in enumerate(doc.chunks[:n])]


def end(n=TINY.n_chunks):
    return [pb.PutRequest(end=pb.PutEnd(n_chunks=n))]


def good():
    return [header(), *l1_frames(), *chunk_frames(), *end()]


def with_chunk(i, **changes):
    frames = good()
    f = frames[1 + len(DOC.l1) + i].chunk
    for k, v in changes.items():
        setattr(f, k, v)
    return frames


CASES = {
    "empty-stream": ([], grpc.StatusCode.INVALID_ARGUMENT),
    "no-header": (l1_frames() + chunk_frames() + end(), grpc.StatusCode.INVALID_ARGUMENT),
    "two-headers": ([header(), header()], grpc.StatusCode.INVALID_ARGUMENT),
    "no-layout": ([pb.PutRequest(header=pb.PutHeader(meta=pb.DocMeta(doc_id=DOC.doc_id, model_fingerprint="m")))],
                  grpc.StatusCode.INVALID_ARGUMENT),
    "bad-doc-id": ([header(doc_id="Z" * 32)], grpc.StatusCode.INVALID_ARGUMENT),
    "zero-layers": ([header(layout_n_layers=0)], grpc.StatusCode.INVALID_ARGUMENT),
    "bad-dtype": ([header(layout_dtype=pb.DTYPE_INT8)], grpc.StatusCode.INVALID_ARGUMENT),
    "bad-extra-json": ([header(extra_json="{not json")], grpc.StatusCode.INVALID_ARGUMENT),
    "undeclared-l1": ([header(), pb.PutRequest(l1=pb.L1Frame(name="nope", data=b"x"))], grpc.StatusCode.INVALID_ARGUMENT),
    "l1-too-long": ([header(), pb.PutRequest(l1=pb.L1Frame(name="keys", data=DOC.l1["keys"].tobytes() + b"xx"))],
                    grpc.StatusCode.INVALID_ARGUMENT),
    "l1-corrupted": ([header(), pb.PutRequest(l1=pb.L1Frame(name="positions", data=np.zeros(12, np.int64).tobytes()))],
                     grpc.StatusCode.DATA_LOSS),
    "chunk-out-of-order": (with_chunk(0, chunk_id=1), grpc.StatusCode.INVALID_ARGUMENT),
    "chunk-bad-offset": (with_chunk(1, offset=8), grpc.StatusCode.INVALID_ARGUMENT),
    "chunk-too-long": (with_chunk(2, data=DOC.chunks[2].tobytes() + b"\0" * 4), grpc.StatusCode.INVALID_ARGUMENT),
    "chunk-too-short": (with_chunk(2, data=DOC.chunks[2].tobytes()[:-4]), grpc.StatusCode.INVALID_ARGUMENT),
    "chunk-corrupted": (with_chunk(3, crc32c=12345), grpc.StatusCode.DATA_LOSS),
    "too-many-chunks": ([header(), *l1_frames(), *chunk_frames(),
                         pb.PutRequest(chunk=pb.ChunkFrame(chunk_id=7, data=b"\0" * 16))], grpc.StatusCode.INVALID_ARGUMENT),
    "missing-l1": ([header(), *chunk_frames(), *end()], grpc.StatusCode.INVALID_ARGUMENT),
    "missing-chunk": ([header(), *l1_frames(), *chunk_frames(n=6), *end(6)], grpc.StatusCode.INVALID_ARGUMENT),
    "no-end-marker": ([header(), *l1_frames(), *chunk_frames()], grpc.StatusCode.INVALID_ARGUMENT),
    "wrong-end-count": ([header(), *l1_frames(), *chunk_frames(), *end(5)], grpc.StatusCode.INVALID_ARGUMENT),
    "after-end": (good() + chunk_frames(n=1), grpc.StatusCode.INVALID_ARGUMENT),
    "oversize-frame": ([header(), pb.PutRequest(l1=pb.L1Frame(name="keys", data=b"\0" * (MAX_FRAME_BYTES + 1)))],
                       grpc.StatusCode.INVALID_ARGUMENT),
    "oversize-message": ([header(), pb.PutRequest(l1=pb.L1Frame(name="keys", data=b"\0" * (8 << 20)))],
                         grpc.StatusCode.RESOURCE_EXHAUSTED),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One daemon for every case: each must leave it consistent for the next."""
    from .support import Daemon, short_tmp

    d = Daemon(data=str(tmp_path_factory.mktemp("wire") / "data"), backend="lmdb", sock_dir=short_tmp()).start()
    ch = grpc.insecure_channel(d.addr, options=[("grpc.max_send_message_length", 64 << 20)])
    stub = store_pb2_grpc.StoreStub(ch)
    with d.client() as c:
        c.put(OTHER.meta, OTHER.l1, OTHER.chunks)
    yield d, stub
    ch.close()
    d.stop()


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_put(served, case):
    d, stub = served
    frames, code = CASES[case]
    with pytest.raises(grpc.RpcError) as e:
        stub.Put(iter(frames), timeout=30)
    assert e.value.code() == code, e.value.details()
    with d.client() as c:
        assert [m.doc_id for m in c.list()] == [OTHER.doc_id]
        st = c.stats()
        assert st.disk.reserved_bytes == 0 and st.n_docs == 1
        assert st.disk.used_bytes == TINY.kv_nbytes + sum(a.nbytes for a in OTHER.l1.values())


def test_good_stream_then_noop(served):
    d, stub = served
    first = stub.Put(iter(good()), timeout=30)
    assert first.created and first.meta.doc_id == DOC.doc_id
    second = stub.Put(iter([header()]), timeout=30)  # already stored: answered from the header alone
    assert not second.created and second.meta.created == first.meta.created
    with d.client() as c:
        assert_doc_equal(c, DOC)
        c.delete(DOC.doc_id)


def test_frames_split_at_the_limit(served):
    """A chunk larger than one frame arrives in pieces and is reassembled exactly."""
    d, stub = served
    from dataclasses import replace

    big = make_doc(replace(TINY, n_layers=8, n_kv_heads=8, head_dim=128, chunk_size=1024, n_tokens=1500), seed=9)
    assert big.chunks[0].nbytes > MAX_FRAME_BYTES
    with d.client() as c:
        c.put(big.meta, big.l1, big.chunks)
        assert_doc_equal(c, big)
        c.delete(big.doc_id)
