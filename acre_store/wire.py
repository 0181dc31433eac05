"""Conversions between the store's dataclasses and its protobuf messages (used by service and client only).

Protobuf messages stay inside the servicer and the client; everything else sees `DocMeta`,
`TensorSpec` and numpy arrays.
"""
from __future__ import annotations

import json

from ._proto import store_pb2 as pb
from .errors import InvalidArgument
from .record import TensorSpec
from .types import DocLayout, DocMeta

MAX_FRAME_BYTES = 4 << 20  # payload bytes per frame (Put and Fetch)
# Fetch payload per frame. With protobuf-parsed frames, 512 KiB pieces were 2.7x faster per call than one
# 4 MiB message (2-core host); with raw frames (encode/decode_fetch_frame below) one frame per chunk up
# to 4 MiB measured faster (p50 4.5 vs 5.8 ms per 4 MiB call, client CPU 3.2 vs 3.9 ms), and the client
# can view a one-frame chunk in place instead of assembling it.
FETCH_FRAME_BYTES = MAX_FRAME_BYTES
# gRPC message limits: a frame plus its header, with room to spare; larger messages are refused
# by gRPC itself with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES + (1 << 20)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

_DTYPES = {
    "float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16, "bfloat16": pb.DTYPE_BFLOAT16,
    "uint16": pb.DTYPE_UINT16, "int8": pb.DTYPE_INT8, "int16": pb.DTYPE_INT16, "int32": pb.DTYPE_INT32,
    "int64": pb.DTYPE_INT64, "uint8": pb.DTYPE_UINT8,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def dtype_to_pb(name: str) -> int:
    try:
        return _DTYPES[name]
    except KeyError:
        raise InvalidArgument(f"unsupported dtype {name!r}") from None


def dtype_from_pb(value: int) -> str:
    try:
        return _DTYPE_NAMES[value]
    except KeyError:
        raise InvalidArgument(f"unsupported dtype enum value {value}") from None


def layout_to_pb(L: DocLayout) -> pb.Layout:
    return pb.Layout(n_layers=L.n_layers, n_kv_heads=L.n_kv_heads, head_dim=L.head_dim,
                     chunk_size=L.chunk_size, dtype=dtype_to_pb(L.dtype), n_tokens=L.n_tokens)


def layout_from_pb(m: pb.Layout) -> DocLayout:
    return DocLayout(n_layers=m.n_layers, n_kv_heads=m.n_kv_heads, head_dim=m.head_dim,
                     chunk_size=m.chunk_size, dtype=dtype_from_pb(m.dtype), n_tokens=m.n_tokens)


def spec_to_pb(s: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(name=s.name, dtype=dtype_to_pb(s.dtype), shape=list(s.shape), crc32c=s.crc32c)


def spec_from_pb(m: pb.TensorSpec) -> TensorSpec:
    return TensorSpec(m.name, dtype_from_pb(m.dtype), tuple(m.shape), m.crc32c)


def meta_to_pb(meta: DocMeta, l1: list[TensorSpec] = ()) -> pb.DocMeta:
    try:
        extra = json.dumps(meta.extra)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"meta.extra is not JSON-serialisable: {e}") from None
    return pb.DocMeta(doc_id=meta.doc_id, model_fingerprint=meta.model_fingerprint, layout=layout_to_pb(meta.layout),
                      name=meta.name, extra_json=extra, format_version=meta.format_version,
                      created=meta.created, pinned=meta.pinned, nbytes=meta.nbytes,
                      l1=[spec_to_pb(s) for s in l1])


def meta_from_pb(m: pb.DocMeta) -> DocMeta:
    if not m.HasField("layout"):
        raise InvalidArgument("document metadata without a layout")
    try:
        extra = json.loads(m.extra_json) if m.extra_json else {}
    except ValueError as e:
        raise InvalidArgument(f"meta.extra_json is not JSON: {e}") from None
    return DocMeta(doc_id=m.doc_id, model_fingerprint=m.model_fingerprint, layout=layout_from_pb(m.layout),
                   name=m.name, extra=extra, format_version=m.format_version, created=m.created,
                   pinned=m.pinned, nbytes=m.nbytes)


# -- Fetch frames without protobuf copies of the payload ------------------------------------------
# A FetchFrame's payload (field 7, `data`) dominates its size. Parsing it with protobuf copies it twice
# (into the message, then out on every access of the field), and serialising copies it again. The
# daemon therefore encodes a frame as the protobuf header (every other field) followed by field 7
# written by hand, and the client parses the raw message itself: the header with protobuf, the
# payload as a view of the received bytes. The bytes on the wire are an ordinary FetchFrame, so any
# protobuf client reads them, and `decode_fetch_frame` accepts any valid encoding (fields in any order).

_DATA_FIELD = 7
_DATA_TAG = bytes([(_DATA_FIELD << 3) | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_PAD_TAG = bytes([(11 << 3) | 2])  # FetchFrame.pad
PAYLOAD_ALIGN = 16


def encode_fetch_frame(head: pb.FetchFrame, data=None) -> bytes:
    """The wire bytes of `head` with `data` (any contiguous buffer) as its payload: one copy of the payload.

    A `pad` field before the payload makes it start at a multiple of PAYLOAD_ALIGN in the message, so the
    client's array over it is aligned for any dtype."""
    hdr = head.SerializeToString()
    if data is None or len(data) == 0:
        return hdr
    length = _varint(len(data))
    p = -(len(hdr) + 2 + 1 + len(length)) % PAYLOAD_ALIGN
    return b"".join((hdr, _PAD_TAG, bytes([p]), bytes(p), _DATA_TAG, length, data))


def _read_varint(buf, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def decode_fetch_frame(raw: bytes) -> tuple[pb.FetchFrame, memoryview]:
    """(header fields as a FetchFrame without its payload, payload as a read-only view of `raw`)."""
    mv = memoryview(raw)
    pos, n = 0, len(raw)
    span = None  # (tag start, payload start, payload end) of the last field 7
    while pos < n:
        start = pos
        key, pos = _read_varint(raw, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _read_varint(raw, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _read_varint(raw, pos)
            if key >> 3 == _DATA_FIELD:
                span = (start, pos, pos + length)
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > n:
            raise ValueError("truncated frame")
    if span is None:
        return pb.FetchFrame.FromString(raw), mv[0:0]
    t, s, e = span
    head = pb.FetchFrame.FromString(raw[:t] + raw[e:] if e < n else raw[:t])
    return head, mv[s:e]
