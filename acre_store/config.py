"""StoreConfig: where and how a `Store` keeps its data (one data directory, its disk tier, the caps)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidArgument

if TYPE_CHECKING:
    from .tiers.object_tier import ObjectStoreConfig

BACKENDS = ("lmdb", "zarr")
DEFAULT_RAM_BYTES = 1 << 30


@dataclass
class StoreConfig:
    """Where and how a store keeps its data. `disk_bytes=0` means no disk cap."""

    path: str
    backend: str | None = None  # None: whatever the directory already holds, else "lmdb"
    ram_bytes: int = DEFAULT_RAM_BYTES
    disk_bytes: int = 0
    lmdb_map_size: int = 256 << 20  # initial; grows as needed
    object_store: "ObjectStoreConfig | None" = None  # the shared bucket under disk (tiers/object_tier.py)

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise InvalidArgument(f"unknown backend {self.backend!r}: expected one of {BACKENDS}")
        if self.ram_bytes < 0 or self.disk_bytes < 0:
            raise InvalidArgument("ram_bytes and disk_bytes must be >= 0")
