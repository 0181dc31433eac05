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
# NOTE: measured on a 2-core host, one 4 MiB Fetch call moves 2.7x faster as 8-16 pieces of 256-512 KiB
# than as one 4 MiB message (HTTP/2 per-stream flow control; grpc.http2.* options did not help).
FETCH_FRAME_BYTES = 512 << 10
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
