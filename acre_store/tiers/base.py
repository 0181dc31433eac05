"""The small interface every disk tier implements (Zarr v3, LMDB).

A document is written through a `Staging` handle and becomes visible only at `Staging.commit`, which
is atomic: after a crash the document is either absent (staged data is discarded by `recover`) or
present and complete. Tiers store and return raw bytes; checksums are verified by the `Store` above
them, so a tier never needs to know about integrity beyond durably keeping what it was given.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from ..record import DocRecord, TensorSpec
from ..types import DocLayout


class Staging(ABC):
    """Write handle of one document being put; nothing is visible until `commit`."""

    @abstractmethod
    def write_l1(self, spec: TensorSpec, arr: np.ndarray) -> None:
        """Store one L1 part (contiguous, dtype and shape as in `spec`)."""

    @abstractmethod
    def write_chunk(self, c: int, chunk: np.ndarray) -> None:
        """Store chunk c: [n_layers, 2, n_kv_heads, len_c, head_dim], contiguous, layout dtype."""

    @abstractmethod
    def commit(self, record: DocRecord) -> None:
        """Atomically publish the document with this record; durable when it returns."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything staged (idempotent; also safe after a failed commit)."""


class DiskTier(ABC):
    """Durable home of every committed document."""

    name: str
    # Documents whose record `records` found damaged: doc_id -> why. They were set aside (their id is free
    # for a new put) and stay until `drop_quarantined`.
    quarantined: dict[str, str]

    def drop_quarantined(self, doc_id: str) -> bool:
        """Remove what is left of a document set aside as damaged; False if there is none."""
        return False

    @abstractmethod
    def recover(self) -> int:
        """Discard staged-but-uncommitted data left by a crash; returns how many puts were discarded."""

    @abstractmethod
    def records(self) -> list[DocRecord]:
        """Every committed document."""

    @abstractmethod
    def stage(self, doc_id: str, layout: DocLayout, l1: list[TensorSpec]) -> Staging:
        """Start writing a document."""

    @abstractmethod
    def read_into(self, record: DocRecord, c: int, out: memoryview, on_layer: Callable[[int], None]) -> None:
        """Fill `out` (writable, exactly chunk c's byte size) with chunk c's stored bytes (unverified), layer
        by layer in order, calling `on_layer(i)` as soon as layer i's bytes are in `out`: the caller
        verifies a layer while it is still in the CPU cache and while the disk reads the next one, so a cold
        read costs little more than the read. `out` holds [n_layers, 2, n_kv_heads, len_c, head_dim].
        ValueError if the stored size (or `out`'s) is wrong; FileNotFoundError or KeyError if it is missing."""

    def will_need(self, record: DocRecord, chunk_ids: list[int]) -> None:
        """A hint that these chunks are about to be read: tiers start the OS reading them from disk in the
        background (readahead), so the disk works while earlier chunks are verified and sent. No-op here."""

    @abstractmethod
    def read_l1(self, record: DocRecord, spec: TensorSpec) -> np.ndarray:
        """One L1 part as stored (unverified)."""

    @abstractmethod
    def update_record(self, record: DocRecord) -> None:
        """Atomically replace a committed document's record (e.g. after pin)."""

    @abstractmethod
    def delete(self, record: DocRecord) -> None:
        """Remove a committed document; atomic (a crash leaves it present or absent)."""

    def close(self) -> None:
        """Release files and handles."""
