"""Fetch frames sent pre-encoded by the daemon and parsed raw by the client (wire.encode/decode_fetch_frame)."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from acre_store._proto import store_pb2 as pb
from acre_store._proto import store_pb2_grpc
from acre_store.wire import CHANNEL_OPTIONS, PAYLOAD_ALIGN, decode_fetch_frame, encode_fetch_frame

from .support import REAL, make_doc


@pytest.mark.parametrize("n", [1, 7, 127, 128, 16383, 16384, 600_001, 4 << 20])
def test_encoded_frame_is_an_ordinary_fetch_frame(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    head = pb.FetchFrame(chunk_id=3, layer_start=1, layer_end=9, n_tokens=64, chunk_bytes=n, offset=0,
                         layer_crc32c=[1, 2, 0xFFFFFFFF], layout=pb.Layout(n_layers=30, head_dim=64))
    raw = encode_fetch_frame(head, memoryview(data))
    f = pb.FetchFrame.FromString(raw)  # any protobuf reader sees the payload in `data`
    assert f.data == data.tobytes() and f.chunk_id == 3 and list(f.layer_crc32c) == [1, 2, 0xFFFFFFFF]
    g, payload = decode_fetch_frame(raw)
    assert bytes(payload) == data.tobytes() and not g.data and g.layout.n_layers == 30 and g.chunk_bytes == n
    assert (len(raw) - n) % PAYLOAD_ALIGN == 0  # the payload ends the message and starts aligned
    assert payload.readonly


def test_decode_accepts_any_field_order():
    raw = pb.FetchFrame(data=b"abcdef", chunk_id=9, shared=pb.SharedRef(path="/x", lease=4)).SerializeToString()
    f, payload = decode_fetch_frame(raw)
    assert bytes(payload) == b"abcdef" and f.chunk_id == 9 and f.shared.lease == 4
    f, payload = decode_fetch_frame(pb.FetchFrame(chunk_id=2).SerializeToString())
    assert f.chunk_id == 2 and len(payload) == 0


@pytest.mark.parametrize("raw", [b"\x3a\x05ab", b"\x08", b"\x0f\x00"])
def test_decode_rejects_truncated_or_unknown_wire_types(raw):
    with pytest.raises(ValueError):
        decode_fetch_frame(raw)


def test_a_plain_protobuf_client_reads_the_daemons_frames(daemon_factory):
    """The wire stays the FetchFrame of the proto: the generated stub (protobuf parsing) gets the same bytes."""
    d = daemon_factory("lmdb")
    doc = make_doc(REAL)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
    with grpc.insecure_channel(d.addr, options=CHANNEL_OPTIONS) as ch:
        stub = store_pb2_grpc.StoreStub(ch)
        frames = list(stub.Fetch(pb.FetchRequest(doc_id=doc.doc_id, chunk_ids=[2, 5], has_layers=True,
                                                 layer_start=3, layer_end=20), timeout=30))
    got = {}
    for f in frames:
        got.setdefault(f.chunk_id, bytearray()).extend(f.data)
    assert {c: bytes(b) for c, b in got.items()} == {c: doc.chunks[c][3:20].tobytes() for c in (2, 5)}
