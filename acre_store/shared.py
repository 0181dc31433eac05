"""Same-host fast path: the daemon's RAM tier lives in shared-memory files that local clients read directly.

Measured on the dev machine (2 cores): a 2.8 MiB chunk through gRPC over a unix socket costs about
four copies (serialise, socket, parse, bytes field) and tops out near 1 GB/s; reading the same bytes
from a /dev/shm file is one copy at memory speed, and mapping it is none. So when a client connects
over a unix socket (the daemon is then on its host) and can open the daemon's files, `Fetch` sends a
`SharedRef` (path, offset, length, lease) instead of the bytes, and the client yields a read-only view of
its mapping of the file, or copies the bytes from it into its own array (writable=True); it keeps its
mappings for later calls (map_cache.py).

- `SharedArena` (daemon) is the RAM tier's allocator: each chunk promoted to RAM is written into its
  own file under /dev/shm/acre-<pid>-<random>/ (mode 0700) and mapped.
- Leases: each SharedRef pins its RAM entry against eviction until the client releases it (the call's
  arrays over its mapping are garbage, or its copy is done) or `LEASE_TTL_S` passes (a client that
  died). A deleted document drops its entries regardless; a reader that then finds the file gone falls
  back to the socket (NOT_FOUND).
- Reuse: a file that leaves the RAM tier is rewritten for another chunk (under a new name) only if every
  lease ever granted on it was released (not expired) and the daemon holds no view of it; else it is
  unlinked, and clients that still map it keep its pages. So a reader holding a lease, or an array it
  got under one, always sees the verified bytes: a lease's file is never rewritten while it may be read.
  (A client may keep a mapping after the lease ends, to reuse it; it reads through it again only under
  a new lease, map_cache.py.)
- New files are written with pwrite(2), so a full /dev/shm is an ENOSPC, meaning "not shared" (the entry
  stays on the heap and goes over the socket), never SIGBUS; reused files already have their pages, and a
  cold chunk is read from disk straight into a reused file's mapping.
"""
from __future__ import annotations

import collections
import itertools
import logging
import mmap
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from typing import Callable, Hashable

import numpy as np

from ._proto import store_pb2 as pb

log = logging.getLogger(__name__)

SHM_ROOT = "/dev/shm"
LEASE_TTL_S = 60.0
MAX_LEASES_PER_CLIENT = 4096  # beyond this, a client's chunks come over the socket instead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _File:
    """One shared file of the arena and what is known about its readers."""

    __slots__ = ("path", "nbytes", "leases", "tainted", "freed", "mm", "writable")

    def __init__(self, path: str, nbytes: int, mm: mmap.mmap, writable: bool):
        self.path, self.nbytes = path, nbytes
        self.mm = mm           # the daemon's mapping (kept while pooled: reuse maps nothing) ...
        self.writable = writable  # ... read-only until the file is first reused
        self.leases = 0        # leases granted on it and not yet ended
        self.tainted = False   # a lease expired: a client may still map it, so it is never rewritten
        self.freed = False     # it left the RAM tier


class SharedArena:
    POOL_FILES = 4            # freed files kept for reuse (outside the RAM tier's byte cap) ...
    POOL_BYTES = 64 << 20     # ... up to this many bytes in all

    def __init__(self, root: str | None = None):
        root = root or (SHM_ROOT if os.path.isdir(SHM_ROOT) else tempfile.gettempdir())
        self._reap_stale(root)
        self.dir = tempfile.mkdtemp(prefix=f"acre-{os.getpid()}-", dir=root)  # mode 0700
        self.ram = None  # the RamTier whose allocator this is (set by the Store)
        self._files: dict[int, _File] = {}  # id(array) -> its file
        # lease id -> (key, expiry, file, owner). Ids are random 63-bit numbers: a client can end only leases
        # whose ids it was given (another client cannot guess them). `owner` names the client (a pid when
        # known: its leases end when it dies) and bounds how many leases it may hold.
        self._leases: dict[int, tuple[Hashable, float, _File, Hashable]] = {}
        self._owned: collections.Counter = collections.Counter()
        self._pool: list[_File] = []  # freed, clean files (renamed pool-*), oldest first
        self._bounce: list[np.ndarray] = []  # at most 2 buffers for chunks bound for a new file
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._next_reap = time.monotonic() + LEASE_TTL_S
        self.granted = self.expired = self.unplaced = self.reused = 0

    @staticmethod
    def _reap_stale(root: str) -> None:
        """Remove arenas of daemons that died without cleaning up (kill -9)."""
        for name in os.listdir(root):
            parts = name.split("-")
            if len(parts) == 3 and parts[0] == "acre" and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    # -- allocator of the RAM tier ----------------------------------------------------------------

    def alloc(self, key: Hashable, arr: np.ndarray) -> np.ndarray:
        if len(key) != 2 or arr.nbytes == 0:  # only chunks (doc_id, c) are served from shared memory
            return arr
        src = memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))

        def copy(out: memoryview) -> None:
            out[:] = src

        out = self.place(key, arr.shape, arr.dtype, copy)
        return arr if out is None else out

    def place(self, key: Hashable, shape: tuple[int, ...], dtype, fill: Callable[[memoryview], None]
              ) -> np.ndarray | None:
        """A read-only array in a shared file whose bytes `fill(out)` writes (and verifies) into the writable
        buffer `out`; `free` retires it. None if there is no room (then `fill` may have run: the caller
        starts over on the heap). If `fill` raises, no file is kept and the exception propagates.

        The file is a pooled one of the same size when there is one (a file that left the RAM tier with
        every lease on it ended, so no client can be reading it): `out` is then the daemon's writable
        mapping of it, kept from its last use, and a disk tier reads a cold chunk straight into the file
        (`DiskTier.read_into`). Else `fill` writes into a reused bounce buffer and the bytes go into a new
        file with pwrite(2): measured on the dev machine, a new 4 MiB file costs 1.4 ms that way against
        2.3 ms with fallocate(2) and a populated writable mapping (zero-fill, page tables), and a full
        /dev/shm is an ENOSPC from pwrite, never a SIGBUS. Writing a pooled file through its mapping costs
        0.9 ms against 2.0 ms with pwrite (tmpfs's per-page write path). Either way the file gets a new
        name, so a path in a SharedRef always means the same bytes."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(key) != 2 or nbytes == 0:
            return None
        path = os.path.join(self.dir, f"{key[0][:16]}-{key[1]}-{next(self._ids)}")
        f = self._take_pooled(nbytes, path)
        if f is not None:
            try:
                fill(memoryview(f.mm))
            except BaseException:
                _unlink(path)  # nobody has seen it; its pages go with the mapping
                f.mm = None
                raise
        else:
            bounce = self._take_bounce(nbytes)
            try:
                mv = memoryview(bounce)[:nbytes]
                fill(mv)
                f = self._new_file(path, mv)
            finally:
                with self._lock:
                    if len(self._bounce) < 2:
                        self._bounce.append(bounce)
            if f is None:
                return None
        # Every view of the entry (the RAM tier's array, sends in progress) has `flat` as its base: once it is
        # garbage, the daemon reads the file no more, and it goes back to the pool or is unlinked.
        flat = np.frombuffer(f.mm, dtype)
        out = flat.reshape(shape)
        out.flags.writeable = False
        with self._lock:
            self._files[id(out)] = f
        weakref.finalize(flat, self._retire, f)
        return out

    def _take_bounce(self, nbytes: int) -> np.ndarray:
        """A buffer of at least nbytes whose pages exist (reused: a fresh one would fault in every page)."""
        with self._lock:
            for i, b in enumerate(self._bounce):
                if b.nbytes >= nbytes:
                    return self._bounce.pop(i)
        return np.empty(nbytes, np.uint8)

    def _new_file(self, path: str, data: memoryview) -> _File | None:
        """A new file holding `data`, mapped read-only (lazily: the daemon reads it only for socket sends);
        None if /dev/shm is full."""
        fd = -1
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], done)
            mm = mmap.mmap(fd, len(data), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except OSError as e:
            _unlink(path)
            with self._lock:
                self.unplaced += 1
                first = self.unplaced == 1
            # Once, not per chunk (the start-up check, shm_space.py, already said what to do about it).
            log.log(logging.WARNING if first else logging.DEBUG,
                    "shared memory full or unusable (%s): chunks that do not fit stay on the heap "
                    "(counted in stats: shared.unplaced)", e)
            return None
        finally:
            if fd >= 0:
                os.close(fd)
        return _File(path, len(data), mm, writable=False)

    def _take_pooled(self, nbytes: int, path: str) -> _File | None:
        with self._lock:
            for i, f in enumerate(self._pool):
                if f.nbytes == nbytes:
                    del self._pool[i]
                    break
            else:
                return None
        try:
            os.rename(f.path, path)
            if not f.writable:  # first reuse of a file made by pwrite: map it writable, once
                fd = os.open(path, os.O_RDWR)
                try:
                    f.mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                                     prot=mmap.PROT_READ | mmap.PROT_WRITE)
                finally:
                    os.close(fd)
                f.writable = True
        except OSError:
            _unlink(path)
            _unlink(f.path)
            f.mm = None
            return None
        f.path = path
        with self._lock:
            self.reused += 1
        return f

    def free(self, key: Hashable, arr: np.ndarray, reusable: bool = True) -> None:
        with self._lock:
            f = self._files.pop(id(arr), None)
            if f is None:
                return
            f.freed = True
            f.tainted |= not reusable  # a deleted document's bytes are not kept around in the pool
            keep = not f.leases and not f.tainted
        if not keep:  # clients may map it (or its document is gone): unlinking leaves their pages alone
            _unlink(f.path)

    def _retire(self, f: _File) -> None:
        """The daemon's last view of `f` is gone: pool it if nobody else can be reading it, else unlink."""
        with self._lock:
            clean = f.freed and not f.leases and not f.tainted and os.path.isdir(self.dir)
            if clean and len(self._pool) < self.POOL_FILES and \
                    sum(p.nbytes for p in self._pool) + f.nbytes <= self.POOL_BYTES:
                pooled = os.path.join(self.dir, f"pool-{next(self._ids)}")
                try:
                    os.rename(f.path, pooled)
                except OSError:
                    pooled = None
                if pooled is not None:
                    f.path, f.freed = pooled, False
                    self._pool.append(f)  # still mapped: the next chunk of this size is written straight in
                    return
        f.mm = None  # unmapped (no view of it is left)
        if f.freed or not f.leases:
            _unlink(f.path)

    # -- leases -------------------------------------------------------------------------------

    def lease(self, doc_id: str, c: int, l0: int, l1: int, owner: Hashable = None) -> pb.SharedRef | None:
        """A reference to chunk c's layers [l0, l1) in shared memory, pinned until released; None if not there
        or if `owner` (the client: a pid, or a peer name) already holds MAX_LEASES_PER_CLIENT leases."""
        with self._lock:
            if self._owned[owner] >= MAX_LEASES_PER_CLIENT:
                return None
        key = (doc_id, c)
        arr = self.ram.lease(key)
        if arr is None:
            return None
        with self._lock:
            f = self._files.get(id(arr))
        if f is None:
            self.ram.release(key)
            return None
        layer_bytes = arr.nbytes // arr.shape[0]
        now = time.monotonic()
        with self._lock:
            lease = secrets.randbits(63)
            while lease == 0 or lease in self._leases:
                lease = secrets.randbits(63)
            self._leases[lease] = (key, now + LEASE_TTL_S, f, owner)
            self._owned[owner] += 1
            f.leases += 1
            self.granted += 1
        if now > self._next_reap:
            self.reap_leases(now)
        return pb.SharedRef(path=f.path, offset=l0 * layer_bytes, length=(l1 - l0) * layer_bytes, lease=lease)

    def release(self, leases: list[int], expired: bool = False) -> None:
        for lease in leases:
            with self._lock:
                entry = self._leases.pop(lease, None)
                if entry is None:
                    continue
                key, _, f, owner = entry
                f.leases -= 1
                self._owned[owner] -= 1
                if not self._owned[owner]:
                    del self._owned[owner]
                if expired:  # the client may still map the file: never rewrite it
                    f.tainted = True
            self.ram.release(key)

    def end_client(self, owner: Hashable) -> None:
        """The client went away: its leases end (as expired: it may still map their files, so they are
        never rewritten)."""
        with self._lock:
            dead = [k for k, (_, _, _, o) in self._leases.items() if o == owner]
            self.expired += len(dead)
        self.release(dead, expired=True)

    def reap_leases(self, now: float) -> None:
        """End the leases that expired by `now` (time.monotonic()), and those of clients (pids) that died:
        their clients forgot them or went away. Their files are never rewritten (a client may still map
        one). `lease` calls this now and then."""
        with self._lock:
            self._next_reap = now + LEASE_TTL_S / 4
            gone = {o for o in self._owned if isinstance(o, int) and not _pid_alive(o)}
            dead = [k for k, (_, exp, _, o) in self._leases.items() if exp < now or o in gone]
            self.expired += len(dead)
        self.release(dead, expired=True)

    def stats(self) -> dict:
        with self._lock:
            return {"dir": self.dir, "files": len(self._files), "leases_active": len(self._leases),
                    "clients": len(self._owned),
                    "leases_granted": self.granted, "leases_expired": self.expired, "unplaced": self.unplaced,
                    "pool_files": len(self._pool), "pool_bytes": sum(f.nbytes for f in self._pool),
                    "reused": self.reused}

    def close(self) -> None:
        with self._lock:
            self._pool.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class SharedGone(Exception):
    """The shared file vanished (document deleted) or cannot be opened here: fetch over the socket."""


def read_shared(ref: pb.SharedRef, view: np.ndarray) -> int:
    """Client side: copy a SharedRef's bytes into `view` (uint8, ref.length bytes); returns the byte count."""
    try:
        fd = os.open(ref.path, os.O_RDONLY)
    except OSError as e:
        raise SharedGone(str(e)) from None
    try:
        done, mv = 0, memoryview(view)
        while done < ref.length:
            n = os.preadv(fd, [mv[done:ref.length]], ref.offset + done)
            if n <= 0:
                raise SharedGone(f"{ref.path}: short file")
            done += n
    finally:
        os.close(fd)
    return done
