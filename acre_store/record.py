"""What the store keeps about one committed document: its metadata, L1 part specs and checksums.

Serialised as one JSON object (`acre.json` in a Zarr document folder, the `m/<doc_id>` value in LMDB).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidArgument
from .types import L1_DTYPES, DocMeta, check_part_name


@dataclass(frozen=True)
class TensorSpec:
    """One L1 part: name, dtype, shape, and (once written) its CRC32C."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    crc32c: int = 0

    def __post_init__(self) -> None:
        check_part_name(self.name)
        if self.dtype not in L1_DTYPES:
            raise InvalidArgument(f"L1 part {self.name!r}: dtype {self.dtype!r} not one of {L1_DTYPES}")
        shape = tuple(int(s) for s in self.shape)
        if any(s < 0 for s in shape) or len(shape) > 8:
            raise InvalidArgument(f"L1 part {self.name!r}: bad shape {self.shape!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.np_dtype.itemsize

    @classmethod
    def of(cls, name: str, arr: np.ndarray) -> "TensorSpec":
        if not isinstance(arr, np.ndarray):
            raise InvalidArgument(f"L1 part {name!r} must be a numpy array, got {type(arr).__name__}")
        return cls(name, arr.dtype.name, arr.shape)


@dataclass
class DocRecord:
    """Committed document: meta, L1 specs, CRC32C per (chunk, layer), and the backend's storage key."""

    meta: DocMeta
    l1: list[TensorSpec]
    chunk_crcs: list[list[int]] = field(default_factory=list)  # [n_chunks][n_layers]
    token: str = ""  # backend-specific id of the stored payload (LMDB key prefix)

    @property
    def doc_id(self) -> str:
        return self.meta.doc_id

    def l1_spec(self, name: str) -> TensorSpec:
        for s in self.l1:
            if s.name == name:
                return s
        raise InvalidArgument(f"document {self.doc_id} has no L1 part {name!r}")

    def to_json(self) -> bytes:
        return json.dumps({
            "meta": self.meta.to_dict(),
            "l1": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "crc32c": s.crc32c} for s in self.l1],
            "chunk_crcs": self.chunk_crcs,
            "token": self.token,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "DocRecord":
        d = json.loads(data)
        return cls(
            meta=DocMeta.from_dict(d["meta"]),
            l1=[TensorSpec(s["name"], s["dtype"], tuple(s["shape"]), s["crc32c"]) for s in d["l1"]],
            chunk_crcs=d["chunk_crcs"],
            token=d.get("token", ""),
        )
