"""EmbeddedStore: the store in-process, no socket; same interface as the gRPC `StoreClient`.

Arrays handed out are the caller's own (copies of the cached, verified bytes), so a caller that
writes into a fetched chunk can never corrupt the RAM tier.
"""
from __future__ import annotations

import copy
import os
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .api import StoreAPI
from .config import DEFAULT_RAM_BYTES, StoreConfig
from .record import TensorSpec
from .stats import StoreStats
from .store import Store
from .types import DocMeta


def default_store_path() -> str:
    """$ACRE_HOME/store, default ~/.cache/acre/store."""
    home = os.environ.get("ACRE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "acre")
    return os.path.join(home, "store")


class EmbeddedStore(StoreAPI):
    def __init__(self, path: str | None = None, backend: str | None = None,
                 ram_bytes: int = DEFAULT_RAM_BYTES, disk_bytes: int = 0, **kw):
        self._store = Store(StoreConfig(path or default_store_path(), backend, ram_bytes, disk_bytes, **kw))
        self.path = self._store.path

    @property
    def store(self) -> Store:
        """The `Store` underneath (its tiers and counters), for tests and tools that look inside. Arrays it
        hands out are the RAM tier's own, read-only: copy before writing."""
        return self._store

    def put(self, meta: DocMeta, l1: Mapping[str, np.ndarray], chunks: Iterable[np.ndarray]) -> DocMeta:
        """Write a document atomically; chunks: [n_layers, 2, n_kv_heads, len_c, head_dim], in order."""
        specs = [TensorSpec.of(name, arr) for name, arr in l1.items()]
        session = self._store.begin_put(meta, specs)
        if session is None:
            return copy.deepcopy(self._store.info(meta.doc_id))
        try:
            for name, arr in l1.items():
                session.add_l1(name, arr)
            for c, chunk in enumerate(chunks):
                session.add_chunk(c, chunk)
            return copy.deepcopy(session.commit())
        except BaseException:
            session.abort()
            raise

    def info(self, doc_id: str) -> DocMeta:
        return copy.deepcopy(self._store.info(doc_id))

    def get_l1(self, doc_id: str) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._store.l1(doc_id).items()}

    def fetch(self, doc_id: str, chunk_ids: Sequence[int], layers: tuple[int, int] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
        it = self._store.fetch(doc_id, chunk_ids, layers)
        return ((c, a.copy()) for c, a in it)

    def prefetch(self, doc_id: str, chunk_ids: Sequence[int] | None = None) -> None:
        self._store.prefetch(doc_id, chunk_ids)

    def list(self) -> list[DocMeta]:
        return copy.deepcopy(self._store.list())

    def delete(self, doc_id: str) -> None:
        self._store.delete(doc_id)

    def pin(self, doc_id: str, pinned: bool = True) -> None:
        self._store.pin(doc_id, pinned)

    def stats(self) -> StoreStats:
        return self._store.stats()

    def wait_idle(self) -> None:
        """Return once every prefetch started so far has finished."""
        self._store.wait_idle()

    def close(self) -> None:
        self._store.close()
