"""DataDir: one store data directory, opened by one process at a time.

    <path>/LOCK               exclusive flock while open; holds the owner's pid (named in the error)
    <path>/acre-store.json    {"format_version", "backend"}: fixed when the directory is created
    <path>/lmdb/ or zarr/     the disk tier

Opening takes the lock first (a busy directory fails before anything is read), checks the format
version and backend, opens the disk tier and discards the puts a crash left uncommitted.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os

from .config import StoreConfig
from .errors import InvalidArgument, StoreUnavailable
from .tiers.base import DiskTier
from .types import FORMAT_VERSION

log = logging.getLogger(__name__)

CONFIG_FILE = "acre-store.json"
LOCK_FILE = "LOCK"


class DataDir:
    def __init__(self, config: StoreConfig):
        self.path = os.path.abspath(config.path)
        os.makedirs(self.path, exist_ok=True)
        self._lockfile = self._take_lock()
        try:
            self.backend = self._check_backend(config.backend)
            self.disk = self._open_tier(config.lmdb_map_size)
            self.discarded_at_start = self.disk.recover()
            if self.discarded_at_start:
                log.warning("discarded %d uncommitted put(s) left by a crash", self.discarded_at_start)
        except BaseException:
            self._lockfile.close()
            raise

    def _take_lock(self):
        f = open(os.path.join(self.path, LOCK_FILE), "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "?"
            f.close()
            raise StoreUnavailable(
                f"store data {self.path} is in use by another process (pid {owner}); "
                "share it through one daemon (`acre store serve`) instead") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        return f

    def _check_backend(self, backend: str | None) -> str:
        cfg_path = os.path.join(self.path, CONFIG_FILE)
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
            if cfg.get("format_version") != FORMAT_VERSION:
                raise InvalidArgument(f"store {self.path} has format version {cfg.get('format_version')}, "
                                      f"this code reads {FORMAT_VERSION}")
            if backend is not None and backend != cfg["backend"]:
                raise InvalidArgument(f"store {self.path} uses backend {cfg['backend']!r}, not {backend!r}")
            return cfg["backend"]
        backend = backend or "lmdb"
        tmp = cfg_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"format_version": FORMAT_VERSION, "backend": backend}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cfg_path)
        return backend

    def _open_tier(self, lmdb_map_size: int) -> DiskTier:
        if self.backend == "zarr":
            from .tiers.zarr_tier import ZarrTier
            return ZarrTier(os.path.join(self.path, "zarr"))
        from .tiers.lmdb_tier import LmdbTier
        return LmdbTier(os.path.join(self.path, "lmdb"), map_size=lmdb_map_size)

    def close(self) -> None:
        """Close the disk tier, then give up the lock."""
        self.disk.close()
        self._lockfile.close()
