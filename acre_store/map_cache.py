"""MapCache: a same-host client's read-only mappings of the daemon's shared files, kept for reuse.

A fast-path Fetch of one 4 MiB chunk used to spend more time mapping the chunk's file (`mmap` with
`MAP_POPULATE`: page tables for 1024 pages, ~0.3 ms) and unmapping the previous one than in its
data-plane round trip. The daemon's RAM tier is a set of files that live as long as their entries, and a
file that leaves the tier is rewritten for the next chunk of its size (under a new name, shared.py), so a
client that keeps its mappings finds most of them again: a hit costs an open, an fstat and an array over
the mapping it already has. A copy (`writable=True` clients) is made from the mapping too: on tmpfs a
`preadv` of 4 MiB took 0.5 ms, a copy out of a populated mapping 0.17 ms (with nothing kept, the copy is
a `preadv`: mapping a file for one copy costs more).

- Key: the file's (st_dev, st_ino), read with fstat after opening the SharedRef's path. The daemon renames
  a pooled file when it reuses it, so the path changes and the inode does not; and an inode cannot go to
  another file while a mapping (or an open descriptor) of it exists. Opening the path on every call also
  keeps the answer for a file that is gone: SharedGone, and the chunk comes over the socket.
- A miss maps the whole file (`MAP_SHARED | MAP_POPULATE`, read-only), so any layer range of it hits
  later. A file whose size differs from its cached mapping's is mapped again (the daemon reuses a file only
  for a chunk of the same size, so this does not happen; the check keeps a mapping from ever serving bytes
  past its file's end).
- Leases are unchanged: each call gets its own array over the mapping, and the lease's finalizer sits on
  it. Every array handed out (the result, its views and slices, `torch.from_numpy` of them) has that array
  as its base (numpy collapses a view's base only down to the first array whose base is not an array), so
  the lease ends when the last array of that call is garbage; the mapping stays. The daemon rewrites a
  pooled file only after every lease on it ended, so no array of an earlier call can show a later chunk's
  bytes, and the next call through the same mapping shows the new ones (the same tmpfs pages).
- Bounded: the least recently used mappings go beyond `max_bytes` or `max_files` (the client's
  `map_cache_bytes`/`map_cache_files`, default 256 MiB and 64 files). A mapping keeps its file's pages after
  the daemon unlinks the file (a chunk evicted and not pooled, a deleted document) until it leaves the
  cache and the last array over it is garbage; such pages count against /dev/shm, not against the daemon's
  --ram-bytes. So each miss (a file new to this client: the daemon made files meanwhile) first drops the
  mappings of unlinked files (an fstat of each one's descriptor, kept open with it), and so does
  `StoreClient.release_leases()`. `max_bytes=0` keeps nothing: each call maps and unmaps, as before.
"""
from __future__ import annotations

import collections
import mmap
import os
import threading
import weakref
from typing import Callable

import numpy as np

from ._proto import store_pb2 as pb
from .shared import SharedGone, read_shared

DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_FILES = 64
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class _Mapping:
    __slots__ = ("mm", "size", "fd")

    def __init__(self, mm: mmap.mmap, size: int, fd: int):
        self.mm, self.size, self.fd = mm, size, fd  # fd: open while cached, to tell when the file is unlinked

    def drop(self) -> None:
        """Out of the cache: unmapped once no array over it is left (the last reference goes)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.mm = None


class MapCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = DEFAULT_MAX_FILES):
        self.max_bytes, self.max_files = int(max_bytes), int(max_files)
        self._maps: collections.OrderedDict[tuple[int, int], _Mapping] = collections.OrderedDict()  # LRU first
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def view(self, ref: pb.SharedRef, dtype, shape: tuple[int, ...], on_unmap: Callable[[], None]) -> np.ndarray:
        """A read-only array [shape] over a SharedRef's bytes (no copy); `on_unmap` runs once when the last
        array of this call (the result or any view of it) is garbage: it ends the lease."""
        mm = self._mapping(ref)
        # This call's own array over the mapping: the base of every array derived from the result.
        flat = np.frombuffer(mm, dtype, count=ref.length // np.dtype(dtype).itemsize, offset=ref.offset)
        weakref.finalize(flat, on_unmap)
        return flat.reshape(shape)

    def copy(self, ref: pb.SharedRef, out: np.ndarray) -> None:
        """Copy a SharedRef's bytes into `out` (uint8, ref.length bytes)."""
        if self.max_bytes <= 0 or self.max_files <= 0:  # nothing is kept: one preadv beats mapping for one copy
            read_shared(ref, out)
            return
        np.copyto(out, np.frombuffer(self._mapping(ref), np.uint8, count=ref.length, offset=ref.offset))

    def _mapping(self, ref: pb.SharedRef) -> mmap.mmap:
        """The mapping of the whole file `ref` names: cached, else made (and cached if it fits)."""
        try:
            fd = os.open(ref.path, os.O_RDONLY)
        except OSError as e:
            raise SharedGone(str(e)) from None
        keep = False
        try:
            st = os.fstat(fd)
            if ref.offset + ref.length > st.st_size:
                raise SharedGone(f"{ref.path}: short file")
            key = (st.st_dev, st.st_ino)
            mm = self._get(key, st.st_size)
            if mm is None:
                mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
                keep = self._put(key, _Mapping(mm, st.st_size, fd))
            return mm
        except OSError as e:
            raise SharedGone(str(e)) from None
        finally:
            if not keep:
                os.close(fd)

    def _get(self, key: tuple[int, int], size: int) -> mmap.mmap | None:
        with self._lock:
            m = self._maps.get(key)
            if m is not None and m.size == size:
                self._maps.move_to_end(key)
                self.hits += 1
                return m.mm
            self.misses += 1
            if m is not None:  # the file changed size: never served through the old mapping
                del self._maps[key]
                self._bytes -= m.size
        if m is not None:
            m.drop()
        self.drop_unlinked()  # the daemon made files since this client's last miss: it may have unlinked some
        return None

    def _put(self, key: tuple[int, int], m: _Mapping) -> bool:
        """Cache `m` (True) unless it cannot fit (False: it lives as long as this call's arrays)."""
        dropped = []
        with self._lock:
            if m.size > self.max_bytes or self.max_files <= 0:
                return False
            old = self._maps.pop(key, None)
            if old is not None:  # another thread mapped it meanwhile
                self._bytes -= old.size
                dropped.append(old)
            self._maps[key] = m
            self._bytes += m.size
            while self._bytes > self.max_bytes or len(self._maps) > self.max_files:
                _, old = self._maps.popitem(last=False)
                self._bytes -= old.size
                self.evictions += 1
                dropped.append(old)
        for old in dropped:
            old.drop()
        return True

    def drop_unlinked(self) -> None:
        """Forget the mappings of files the daemon has unlinked (their pages go with the last array over them)."""
        dropped = []
        with self._lock:
            for key, m in list(self._maps.items()):
                try:
                    gone = os.fstat(m.fd).st_nlink == 0
                except OSError:
                    gone = True
                if gone:
                    del self._maps[key]
                    self._bytes -= m.size
                    self.evictions += 1
                    dropped.append(m)
        for m in dropped:
            m.drop()

    def stats(self) -> dict:
        with self._lock:
            return {"files": len(self._maps), "bytes": self._bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}

    def close(self) -> None:
        """Forget every mapping and keep none from now on."""
        with self._lock:
            maps, self._maps = list(self._maps.values()), collections.OrderedDict()
            self._bytes = 0
            self.max_bytes = self.max_files = 0
        for m in maps:
            m.drop()
