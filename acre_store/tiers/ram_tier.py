"""RAM tier: an LRU of verified chunks, capped in bytes, with hit/miss/eviction counters.

Values are read-only numpy arrays that have already passed their checksum; callers copy out of them.
An optional allocator places the bytes elsewhere (the daemon's shared-memory files, so same-host
clients can read them without the socket). An entry can be leased (a client is reading its file): a
leased entry is never evicted, and an insert that cannot make room without evicting one is skipped.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Protocol

import numpy as np


class Allocator(Protocol):
    """Where the RAM tier keeps entries' bytes instead of the process heap (the daemon's `SharedArena`)."""

    def alloc(self, key: Hashable, arr: np.ndarray) -> np.ndarray:
        """A copy of arr in the allocator's memory (or arr itself if it cannot place it)."""

    def place(self, key: Hashable, shape: tuple[int, ...], dtype, fill: Callable[[memoryview], None]
              ) -> np.ndarray | None:
        """A read-only array in the allocator's memory whose bytes `fill(out)` writes into the writable buffer
        `out` (a cold read lands there without a copy); None if there is no room. If `fill` raises, nothing
        is kept and the exception propagates. Hand the result to `RamTier.put(..., placed=True)`."""

    def free(self, key: Hashable, arr: np.ndarray, reusable: bool = True) -> None:
        """Called once when an array leaves the tier (arrays it did not place are ignored); reusable=False:
        its document was deleted (the memory must not be handed to another entry with the old bytes kept
        around)."""


@dataclass
class RamStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    inserts: int = 0
    skipped: int = 0  # inserts refused: larger than the cap, or no room without evicting a leased entry


class RamTier:
    def __init__(self, capacity_bytes: int, allocator: Allocator | None = None):
        self.capacity = int(capacity_bytes)
        self.used = 0
        self.stats = RamStats()
        self._lru: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._leases: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self.allocator = allocator  # alloc/free run outside the lock (they copy or unlink)

    def __len__(self) -> int:
        return len(self._lru)

    def keys(self) -> list[Hashable]:
        """The cached keys, least recently used first (the order eviction takes them in)."""
        with self._lock:
            return list(self._lru)

    def leases(self) -> dict[Hashable, int]:
        """The leased keys, each with how many leases it holds."""
        with self._lock:
            return dict(self._leases)

    def get(self, key: Hashable) -> np.ndarray | None:
        """The cached array (most recently used now), or None; counts a hit or a miss."""
        with self._lock:
            arr = self._lru.get(key)
            if arr is None:
                self.stats.misses += 1
                return None
            self._lru.move_to_end(key)
            self.stats.hits += 1
            return arr

    def lease(self, key: Hashable) -> np.ndarray | None:
        """Pin the entry against eviction until `release` (no hit/miss counted); None if absent."""
        with self._lock:
            arr = self._lru.get(key)
            if arr is not None:
                self._leases[key] = self._leases.get(key, 0) + 1
            return arr

    def contains(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._lru

    def put(self, key: Hashable, arr: np.ndarray, placed: bool = False) -> bool:
        """Insert (evicting least recently used unleased entries); False if not stored (present, or no room).

        placed: arr stays where it is (the allocator placed it already, or had no room for it): it is not
        handed to `allocator.alloc`; it is handed to `allocator.free` if it is not stored (and whenever it
        leaves), which ignores arrays the allocator did not place."""
        n = arr.nbytes
        with self._lock:
            refused = key in self._lru or n > self.capacity
            if refused:
                self.stats.skipped += key not in self._lru
        if refused:
            if placed:
                self._notify([(key, arr)])
            return False
        if self.allocator is not None and not placed:
            arr = self.allocator.alloc(key, arr)
        evicted, stored = [], False
        with self._lock:
            if key not in self._lru:
                victims, room = [], self.capacity - self.used
                for k, v in self._lru.items():  # oldest first
                    if room >= n:
                        break
                    if not self._leases.get(k):
                        victims.append(k)
                        room += v.nbytes
                if room >= n:
                    for k in victims:
                        v = self._lru.pop(k)
                        self.used -= v.nbytes
                        self.stats.evictions += 1
                        evicted.append((k, v))
                    arr.flags.writeable = False
                    self._lru[key] = arr
                    self.used += n
                    self.stats.inserts += 1
                    stored = True
                else:
                    self.stats.skipped += 1
        if not stored:
            evicted.append((key, arr))
        self._notify(evicted)
        return stored

    def release(self, key: Hashable) -> None:
        """End one lease on `key`."""
        with self._lock:
            left = self._leases.get(key, 0) - 1
            if left > 0:
                self._leases[key] = left
            else:
                self._leases.pop(key, None)

    def drop(self, match: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key matches (leased or not: used when a document is deleted)."""
        with self._lock:
            keys = [k for k in self._lru if match(k)]
            dropped = [(k, self._lru.pop(k)) for k in keys]
            for k, v in dropped:
                self.used -= v.nbytes
                self._leases.pop(k, None)
        self._notify(dropped, reusable=False)
        return len(dropped)

    def clear(self) -> None:
        self.drop(lambda k: True)

    def _notify(self, entries, reusable: bool = True) -> None:
        if self.allocator is not None:
            for k, v in entries:
                self.allocator.free(k, v, reusable)
