"""StoreAPI: everything a worker calls on a store, the same in-process (`EmbeddedStore`) and over the
daemon (`StoreClient`). Both raise the same exceptions (errors.py) for the same failures.

Arrays: a chunk is [n_layers, 2, n_kv_heads, len_c, head_dim] in the layout's numpy dtype (np.uint16 bit
views for bfloat16); a fetch with `layers=(l0, l1)` returns [l1-l0, 2, n_kv_heads, len_c, head_dim].
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .fetch_handle import FetchHandle
from .stats import StoreStats
from .types import DocMeta


class StoreAPI(ABC):
    @abstractmethod
    def put(self, meta: DocMeta, l1: Mapping[str, np.ndarray], chunks: Iterable[np.ndarray]) -> DocMeta:
        """Store a document atomically and return its stored meta (`created`, `nbytes` set).

        chunks: in order, each `meta.layout.chunk_shape(c)`; any iterable (a generator is streamed, one
        chunk held at a time). A document already stored is a no-op returning its meta (its chunks are not
        read); the same id with another layout or model fingerprint raises LayoutMismatch."""

    @abstractmethod
    def info(self, doc_id: str) -> DocMeta:
        """The document's meta; DocumentNotFound if it is not stored."""

    @abstractmethod
    def get_l1(self, doc_id: str) -> dict[str, np.ndarray]:
        """Every L1 part of the document, by name, checksum-verified."""

    @abstractmethod
    def fetch(self, doc_id: str, chunk_ids: Sequence[int], layers: tuple[int, int] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (chunk_id, chunk) in request order as each one arrives, checksum-verified.

        A request error (unknown document, bad chunk ids or layer range) is raised by the call (embedded)
        or at the first `next()` (client); DataLoss at the chunk that fails, after the good ones before it."""

    def fetch_async(self, doc_id: str, chunk_ids: Sequence[int], layers: tuple[int, int] | None = None
                    ) -> FetchHandle:
        """Start the fetch now (request validated first), transfer in a background thread."""
        it = self.fetch(doc_id, chunk_ids, layers)
        return FetchHandle(lambda: it)

    @abstractmethod
    def prefetch(self, doc_id: str, chunk_ids: Sequence[int] | None = None) -> None:
        """Start promoting chunks (all by default) to the RAM tier in the background; returns at once."""

    @abstractmethod
    def list(self) -> list[DocMeta]:
        """Every stored document's meta, oldest first."""

    @abstractmethod
    def delete(self, doc_id: str) -> None:
        """Remove the document; DocumentNotFound if it is not stored."""

    @abstractmethod
    def pin(self, doc_id: str, pinned: bool = True) -> None:
        """Exempt the document from disk-cap eviction (pinned=False lifts that)."""

    @abstractmethod
    def stats(self) -> StoreStats:
        """Tier usage, caps and counters (`to_dict()`: the JSON form)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store (embedded: its data directory; client: its connections)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
