"""The worker's device chunk cache (the "GPU tier"): whole refilled chunks kept on the worker's device.

A second question on the same chunks finds them here and fetches nothing from the store.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch


class DeviceChunkCache:
    """LRU of whole chunks [n_layers, 2, n_kv_heads, len, head_dim] on the worker's device, by bytes.

    An OrderedDict gives O(1) move-to-end on a hit and O(1) eviction of the least recently used.
    """

    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes
        self._d: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0
        self._lock = threading.Lock()

    def get(self, doc_id: str, c: int) -> torch.Tensor | None:
        with self._lock:
            t = self._d.get((doc_id, c))
            if t is None:
                self.misses += 1
                return None
            self._d.move_to_end((doc_id, c))
            self.hits += 1
            return t

    def put(self, doc_id: str, c: int, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if size > self.capacity:
            return
        with self._lock:
            old = self._d.pop((doc_id, c), None)
            if old is not None:
                self.nbytes -= old.numel() * old.element_size()
            while self._d and self.nbytes + size > self.capacity:
                _, ev = self._d.popitem(last=False)
                self.nbytes -= ev.numel() * ev.element_size()
                self.evictions += 1
            self._d[(doc_id, c)] = t
            self.nbytes += size

    def drop_doc(self, doc_id: str) -> None:
        with self._lock:
            for key in [k for k in self._d if k[0] == doc_id]:
                t = self._d.pop(key)
                self.nbytes -= t.numel() * t.element_size()

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.nbytes = 0

    def stats(self) -> dict:
        return {"bytes": self.nbytes, "capacity": self.capacity, "chunks": len(self._d), "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}
