"""Typed boundary of the store: a document's layout and metadata, as the engine sees them.

A document's L2 chunk `c` holds the KV of tokens `[c*C, (c+1)*C)` for every layer:
`[n_layers, 2 (k,v), n_kv_heads, len_c, head_dim]`, layer-major so a layer range is one contiguous slice.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidArgument

FORMAT_VERSION = 1

# Layout dtypes, and the numpy dtype their bytes travel as (numpy has no bfloat16: bit view).
LAYOUT_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
}
# dtypes accepted for L1 parts.
L1_DTYPES = ("float32", "float16", "uint16", "int8", "int16", "int32", "int64", "uint8")

# What one put may declare: a chunk is assembled whole in the daemon's memory, and the metadata travels in
# every List page; larger values are refused (INVALID_ARGUMENT) before anything is allocated or written.
MAX_CHUNK_BYTES = 256 << 20
MAX_TOKENS = 1 << 26
MAX_META_BYTES = 256 << 10  # name + extra, as JSON

_DOC_ID = re.compile(r"[0-9a-f]{16,128}")
_PART_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")


def check_doc_id(doc_id: str) -> str:
    """Validate a content-address id: lowercase hex, 16..128 characters."""
    if not isinstance(doc_id, str) or not _DOC_ID.fullmatch(doc_id):
        raise InvalidArgument(f"invalid document id {doc_id!r}: expected 16-128 lowercase hex characters")
    return doc_id


def check_part_name(name: str) -> str:
    if not isinstance(name, str) or not _PART_NAME.fullmatch(name):
        raise InvalidArgument(f"invalid L1 part name {name!r}: expected [A-Za-z0-9_.-], at most 64 characters")
    return name


@dataclass(frozen=True)
class DocLayout:
    """Shape of a document's KV. bfloat16 chunks travel as np.uint16 bit views."""

    n_layers: int
    n_kv_heads: int
    head_dim: int
    chunk_size: int
    dtype: str
    n_tokens: int

    def __post_init__(self) -> None:
        for f in ("n_layers", "n_kv_heads", "head_dim", "chunk_size", "n_tokens"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidArgument(f"layout.{f} must be a positive integer, got {v!r}")
            object.__setattr__(self, f, int(v))
        if self.dtype not in LAYOUT_DTYPES:
            raise InvalidArgument(f"layout.dtype must be one of {sorted(LAYOUT_DTYPES)}, got {self.dtype!r}")

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_tokens / self.chunk_size)

    @property
    def np_dtype(self) -> np.dtype:
        """The numpy dtype chunks travel as."""
        return LAYOUT_DTYPES[self.dtype]

    def chunk_len(self, c: int) -> int:
        """Tokens in chunk c (the last one may be shorter)."""
        if not 0 <= c < self.n_chunks:
            raise InvalidArgument(f"chunk id {c} out of range [0, {self.n_chunks})")
        return min(self.chunk_size, self.n_tokens - c * self.chunk_size)

    def chunk_shape(self, c: int) -> tuple[int, int, int, int, int]:
        """[n_layers, 2, n_kv_heads, len_c, head_dim]"""
        return (self.n_layers, 2, self.n_kv_heads, self.chunk_len(c), self.head_dim)

    def chunk_nbytes(self, c: int) -> int:
        return math.prod(self.chunk_shape(c)) * self.np_dtype.itemsize

    @property
    def kv_nbytes(self) -> int:
        """Bytes of all L2 chunks together."""
        return self.n_layers * 2 * self.n_kv_heads * self.n_tokens * self.head_dim * self.np_dtype.itemsize


@dataclass
class DocMeta:
    """A document's metadata. `created`, `pinned` and `nbytes` are set by the store."""

    doc_id: str
    model_fingerprint: str
    layout: DocLayout
    name: str = ""
    extra: dict = field(default_factory=dict)  # JSON-serialisable engine metadata
    format_version: int = FORMAT_VERSION
    created: float = 0.0
    pinned: bool = False
    nbytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DocMeta":
        d = dict(d)
        d["layout"] = DocLayout(**d["layout"])
        return cls(**d)

    def validate(self) -> None:
        """Check what a client sends before anything is written."""
        check_doc_id(self.doc_id)
        if not isinstance(self.layout, DocLayout):
            raise InvalidArgument("meta.layout must be a DocLayout")
        if not isinstance(self.model_fingerprint, str) or not self.model_fingerprint:
            raise InvalidArgument("meta.model_fingerprint must be a non-empty string")
        if self.format_version != FORMAT_VERSION:
            raise InvalidArgument(f"unsupported format_version {self.format_version} (this store writes {FORMAT_VERSION})")
        if not isinstance(self.extra, dict):
            raise InvalidArgument("meta.extra must be a dict")
        if not isinstance(self.name, str) or not self.name.isprintable():  # no terminal escapes in `acre store ls`
            raise InvalidArgument(f"meta.name {self.name!r} has control characters")
        L = self.layout
        if L.n_tokens > MAX_TOKENS or L.chunk_nbytes(0) > MAX_CHUNK_BYTES:
            raise InvalidArgument(f"layout too large: {L.n_tokens} tokens (at most {MAX_TOKENS}), chunks of "
                                  f"{L.chunk_nbytes(0)} bytes (at most {MAX_CHUNK_BYTES})")
        try:
            meta_bytes = len(json.dumps([self.name, self.extra]).encode())
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"meta.extra is not JSON-serialisable: {e}") from None
        if meta_bytes > MAX_META_BYTES:
            raise InvalidArgument(f"metadata too large: {meta_bytes} bytes of name and extra (at most {MAX_META_BYTES})")
