"""MultiStoreClient: one `StoreAPI` over several daemons, each document routed to one of them.

`connect("unix:///a.sock,host:5005,...")` returns it. A document goes to the first daemon of its
rendezvous order (routing.py), so its RAM copy lives on one daemon; a call that finds that daemon down
(`StoreUnavailable`) goes to the next in the order, which reads the document through from the shared
bucket. A fetch that loses its daemon mid-stream resumes the remaining chunks on the next one. `list`
merges every reachable daemon's list (deduplicated by id); `delete` deletes on every reachable daemon
(each drops its local copy; the bucket copy goes with the first); `stats` adds up the daemons' numbers.

Clients connect on first use. A daemon found down is tried last for `down_s` seconds (so each call
does not wait for its connect timeout again), then in its place again.
"""
from __future__ import annotations

import threading
import time
from dataclasses import fields, is_dataclass, replace
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from .api import StoreAPI
from .errors import DocumentNotFound, StoreUnavailable
from .routing import rendezvous_order, split_addrs
from .stats import StoreStats
from .tiers.object_tier import iter_unique
from .types import DocMeta

T = TypeVar("T")


class MultiStoreClient(StoreAPI):
    def __init__(self, addrs: Sequence[str], down_s: float = 5.0, **client_kw):
        """addrs: daemon addresses (the same list, in any order, routes the same way in every worker);
        client_kw: passed to each `StoreClient` (connect_timeout defaults to 2 s here)."""
        self.addrs = list(addrs)
        if not self.addrs:
            raise StoreUnavailable("no store daemon address given")
        self.down_s = down_s
        self._kw = {"connect_timeout": 2.0, **client_kw}
        self._clients: dict = {}
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_string(cls, addr: str, **client_kw) -> "MultiStoreClient":
        return cls(split_addrs(addr), **client_kw)

    def order(self, doc_id: str) -> list[str]:
        """The daemons this document is tried on: its home first, daemons recently found down last."""
        now = time.monotonic()
        order = rendezvous_order(doc_id, self.addrs)
        return sorted(order, key=lambda a: self._down_until.get(a, 0.0) > now)

    def client(self, addr: str):
        """The connected client of one daemon; StoreUnavailable if it cannot be reached now."""
        from .client import StoreClient

        with self._lock:
            c = self._clients.get(addr)
        if c is None:
            c = StoreClient(addr, **self._kw)
            with self._lock:
                c = self._clients.setdefault(addr, c)
        return c

    def _drop(self, addr: str) -> None:
        """Forget a client whose daemon went away (reconnect on next use) and try it last for a while."""
        with self._lock:
            self._down_until[addr] = time.monotonic() + self.down_s
            c = self._clients.pop(addr, None)
        if c is not None:
            c.close()

    def _routed(self, doc_id: str, call: Callable[[object], T]) -> T:
        """call(client) on the document's daemons in order, until one is not unavailable."""
        errors = []
        for addr in self.order(doc_id):
            try:
                return call(self.client(addr))
            except StoreUnavailable as e:
                errors.append(str(e))
                self._drop(addr)
        raise StoreUnavailable(f"no store daemon could serve document {doc_id}: " + "; ".join(errors))

    def _each(self, call: Callable[[object], T]) -> list[T]:
        """call(client) on every reachable daemon; StoreUnavailable only if none is."""
        out, errors = [], []
        for addr in self.addrs:
            try:
                out.append(call(self.client(addr)))
            except StoreUnavailable as e:
                errors.append(str(e))
                self._drop(addr)
        if not out:
            raise StoreUnavailable("no store daemon is reachable: " + "; ".join(errors))
        return out

    # -- StoreAPI -------------------------------------------------------------------------------

    def put(self, meta: DocMeta, l1: Mapping[str, np.ndarray], chunks: Iterable[np.ndarray]) -> DocMeta:
        # NOTE: a daemon found down at connect time is skipped; one lost once the chunks started to flow
        # cannot be retried with a generator, so then the error is the caller's (a retry re-sends).
        return self._routed(meta.doc_id, lambda c: c.put(meta, l1, chunks))

    def info(self, doc_id: str) -> DocMeta:
        return self._routed(doc_id, lambda c: c.info(doc_id))

    def get_l1(self, doc_id: str) -> dict[str, np.ndarray]:
        return self._routed(doc_id, lambda c: c.get_l1(doc_id))

    def fetch(self, doc_id: str, chunk_ids: Sequence[int], layers: tuple[int, int] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
        """Chunks in request order from the document's daemon; on the loss of a daemon the chunks not yet
        received are asked of the next one in the order."""
        ids = [int(c) for c in chunk_ids]

        def gen():
            done, errors = 0, []
            for addr in self.order(doc_id):
                try:
                    for item in self.client(addr).fetch(doc_id, ids[done:], layers):
                        done += 1
                        yield item
                    return
                except StoreUnavailable as e:
                    errors.append(str(e))
                    self._drop(addr)
            raise StoreUnavailable(f"no store daemon could serve document {doc_id}: " + "; ".join(errors))
        return gen()

    def prefetch(self, doc_id: str, chunk_ids: Sequence[int] | None = None) -> None:
        self._routed(doc_id, lambda c: c.prefetch(doc_id, chunk_ids))

    def list(self) -> list[DocMeta]:
        return iter_unique(m for metas in self._each(lambda c: c.list()) for m in metas)

    def delete(self, doc_id: str) -> None:
        def one(c) -> bool:
            try:
                c.delete(doc_id)
                return True
            except DocumentNotFound:
                return False
        if not any(self._each(one)):
            raise DocumentNotFound(f"unknown document {doc_id}")

    def pin(self, doc_id: str, pinned: bool = True) -> None:
        self._routed(doc_id, lambda c: c.pin(doc_id, pinned))

    def stats(self) -> StoreStats:
        """The reachable daemons' numbers added up (paths joined with ',')."""
        return _sum_stats(self._each(lambda c: c.stats()))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()


def _sum_stats(items: list):
    """Field-wise sum of equal dataclasses: ints added, strings joined when they differ."""
    first = items[0]
    if not is_dataclass(first):
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            vals = list(dict.fromkeys(str(x) for x in items))
            return first if len(vals) == 1 else type(first)(",".join(vals)) if isinstance(first, str) else first
        return sum(items)
    return replace(first, **{f.name: _sum_stats([getattr(x, f.name) for x in items]) for f in fields(first)})
