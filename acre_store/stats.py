"""What a store counts, and `StoreStats`, the typed snapshot `stats()` returns.

`StoreStats.to_dict()` is the JSON the daemon sends in `StatsResponse` and `acre store stats --json`
prints (key order included); `StoreStats.from_dict` reads it back on the client. The two daemon-only
sections (`shared`, `data_plane`) stay plain dicts: they are reports of the daemon's transports, absent
(None) on an embedded store.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class RamTierStats:
    used_bytes: int
    capacity_bytes: int
    entries: int
    hits: int
    misses: int
    evictions: int
    inserts: int
    skipped: int  # inserts refused: larger than the cap, or no room without evicting a leased entry


@dataclass(frozen=True)
class DiskTierStats:
    used_bytes: int       # payload bytes (chunks + L1) of the committed documents
    capacity_bytes: int   # 0: no cap
    reserved_bytes: int   # reserved by puts in progress
    reads: int
    evictions: int
    checksum_failures: int  # also missing or wrong-size values on disk


@dataclass(frozen=True)
class OpStats:
    puts: int
    put_noops: int  # puts of a document already stored
    put_aborts: int
    fetched_chunks: int
    fetched_bytes: int
    deletes: int
    discarded_at_start: int  # uncommitted puts a crash left, discarded when the store opened


@dataclass(frozen=True)
class StoreStats:
    backend: str
    path: str
    format_version: int
    n_docs: int
    n_pinned: int
    ram: RamTierStats
    disk: DiskTierStats
    ops: OpStats
    # A daemon with the same-host fast path: {dir, files, leases_active, leases_granted, leases_expired,
    # unplaced, pool_files, pool_bytes, reused} (SharedArena.stats()).
    shared: dict[str, Any] | None = None
    # A daemon serving a data plane: {paths, connections, calls, chunks, bytes, errors, refused}.
    data_plane: dict[str, Any] | None = None
    # Documents set aside as damaged at start-up: doc_id -> why (delete them, or put them again).
    quarantined: dict[str, str] | None = None
    # A daemon: its streaming calls {active, max, refused, idle_cancelled} (StreamGuard.stats()).
    streams: dict[str, Any] | None = None
    # A store with an object-store tier: {url, gets, get_bytes, puts, put_bytes, deletes, errors,
    # read_throughs, landing} (ObjectTier.stats(); requests to the bucket since the store opened).
    object_store: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (absent daemon sections are left out)."""
        d = asdict(self)
        for k in ("shared", "data_plane", "streams", "quarantined", "object_store"):
            if d[k] is None:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreStats":
        """Read `to_dict()`'s form back; keys this code does not know are ignored."""
        d = _known(cls, d)
        return cls(**{**d, "ram": RamTierStats(**_known(RamTierStats, d["ram"])),
                      "disk": DiskTierStats(**_known(DiskTierStats, d["disk"])),
                      "ops": OpStats(**_known(OpStats, d["ops"]))})


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class StoreCounters:
    """Running totals of a `Store` since it opened. Read the fields directly; `add` is thread-safe."""

    disk_reads: int = 0
    disk_evictions: int = 0
    checksum_failures: int = 0
    puts: int = 0
    put_noops: int = 0
    put_aborts: int = 0
    fetched_chunks: int = 0
    fetched_bytes: int = 0
    deletes: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **deltas: int) -> None:
        """Add to counters by name: `add(puts=1)`."""
        with self._lock:
            for name, n in deltas.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> "StoreCounters":
        """A copy taken at one instant (no `add` half-counted)."""
        with self._lock:
            return replace(self)
