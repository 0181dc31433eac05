"""PutSession: one document being written into a store, part by part, then committed atomically.

Every part is checked against the header (name, dtype, shape; chunks in order, each the layout's shape)
and, when the sender gave one, against its CRC32C, before it is staged on disk. The CRC32C of every L1
part and of every (chunk, layer) goes into the document's record, which `commit` publishes.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np

from .checksum import crc32c, layer_crcs
from .errors import DataLoss, InvalidArgument
from .record import DocRecord, TensorSpec
from .tiers.base import Staging
from .types import DocMeta


class PutSession:
    """One document being written: parts arrive (L1 in any order, chunks in order), then `commit`."""

    def __init__(self, meta: DocMeta, l1: list[TensorSpec], staging: Staging, nbytes: int,
                 publish: Callable[["PutSession", DocRecord], DocMeta], discard: Callable[["PutSession"], None]):
        """publish(session, record): the store commits the staged document; discard(session): it aborts it.
        nbytes: the payload bytes the store reserved for this put."""
        self.meta, self.staging, self.nbytes = meta, staging, nbytes
        self.layout = meta.layout
        self._publish, self._discard = publish, discard
        self._specs = {s.name: s for s in l1}
        self._l1_crc: dict[str, int] = {}
        self._chunk_crcs: list[list[int]] = []
        self._closed = False

    @property
    def next_chunk(self) -> int:
        return len(self._chunk_crcs)

    def add_l1(self, name: str, arr: np.ndarray, crc: int | None = None) -> None:
        spec = self._specs.get(name)
        if spec is None:
            raise InvalidArgument(f"L1 part {name!r} is not declared in the header")
        if name in self._l1_crc:
            raise InvalidArgument(f"L1 part {name!r} sent twice")
        if arr.dtype != spec.np_dtype or arr.shape != spec.shape:
            raise InvalidArgument(f"L1 part {name!r}: got {arr.dtype}{list(arr.shape)}, declared {spec.dtype}{list(spec.shape)}")
        arr = np.require(arr, requirements="C")  # keeps 0-d arrays 0-d
        got = crc32c(arr)
        if crc is not None and crc != got:
            raise DataLoss(f"L1 part {name!r} arrived corrupted (checksum mismatch)")
        self.staging.write_l1(spec, arr)
        self._l1_crc[name] = got

    def add_chunk(self, c: int, chunk: np.ndarray, crc: int | None = None) -> None:
        """chunk: [n_layers, 2, n_kv_heads, len_c, head_dim] in the layout dtype (uint16 for bfloat16)."""
        if c != self.next_chunk:
            raise InvalidArgument(f"chunk {c} out of order: expected chunk {self.next_chunk}")
        if c >= self.layout.n_chunks:
            raise InvalidArgument(f"too many chunks: the layout has {self.layout.n_chunks}")
        if not isinstance(chunk, np.ndarray):
            raise InvalidArgument(f"chunk {c} must be a numpy array, got {type(chunk).__name__}")
        want = self.layout.chunk_shape(c)
        if chunk.shape != want or chunk.dtype != self.layout.np_dtype:
            raise InvalidArgument(
                f"chunk {c}: got {chunk.dtype}{list(chunk.shape)}, layout wants {self.layout.np_dtype}{list(want)}")
        chunk = np.ascontiguousarray(chunk)
        if crc is not None and crc != crc32c(chunk):
            raise DataLoss(f"chunk {c} arrived corrupted (checksum mismatch)")
        crcs = layer_crcs(chunk)
        self.staging.write_chunk(c, chunk)
        self._chunk_crcs.append(crcs)

    def commit(self) -> DocMeta:
        """Publish atomically once every declared part arrived; returns the stored meta."""
        missing = sorted(set(self._specs) - set(self._l1_crc))
        if missing:
            raise InvalidArgument(f"incomplete put: L1 parts {missing} missing")
        if self.next_chunk != self.layout.n_chunks:
            raise InvalidArgument(f"incomplete put: {self.next_chunk} of {self.layout.n_chunks} chunks sent")
        meta = replace(self.meta, created=time.time(), nbytes=self.nbytes, pinned=bool(self.meta.pinned))
        record = DocRecord(
            meta=meta,
            l1=[replace(s, crc32c=self._l1_crc[s.name]) for s in self._specs.values()],
            chunk_crcs=self._chunk_crcs)
        self._closed = True
        return self._publish(self, record)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._discard(self)
