"""TierReader: how a store reads a committed document's bytes: RAM tier first, else disk, verified.

A chunk missing from the RAM tier is read from the disk tier straight into its RAM home (a shared file
of the daemon's arena, else a new array), layer by layer, each layer checked against its CRC32C as soon
as it lands, then cached. L1 parts are read whole and checked the same way. Bytes that fail their check,
or that are missing or the wrong size on disk, raise `DataLoss` (counted in `checksum_failures`) and are
never returned or cached. Prefetches promote chunks the same way on a background thread.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np

from .checksum import crc32c
from .doc_index import DocIndex
from .errors import DataLoss, DocumentNotFound, InvalidArgument, StoreError
from .record import DocRecord, TensorSpec
from .stats import StoreCounters
from .tiers.base import DiskTier
from .tiers.ram_tier import RamTier

log = logging.getLogger(__name__)


class TierReader:
    def __init__(self, ram: RamTier, disk: DiskTier, index: DocIndex, counters: StoreCounters):
        self.ram, self.disk, self.index, self.counters = ram, disk, index, counters
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="acre-prefetch")
        # (doc_id, chunk ids) -> futures of chunks read ahead from the bucket while the document is landing
        # there (ReadThrough.ahead); None without an object store
        self.ahead: Callable[[str, list[int]], dict[int, Future]] | None = None

    @staticmethod
    def check_chunks(rec: DocRecord, chunk_ids: Sequence[int], layers: tuple[int, int] | None) -> tuple[int, int]:
        """Validate a fetch request; returns the layer range [l0, l1)."""
        n, n_layers = rec.meta.layout.n_chunks, rec.meta.layout.n_layers
        for c in chunk_ids:
            if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c < n:
                raise InvalidArgument(f"chunk id {c!r} out of range [0, {n}) for document {rec.doc_id}")
        if layers is None:
            return 0, n_layers
        try:
            l0, l1 = (int(x) for x in layers)
        except (TypeError, ValueError):
            raise InvalidArgument(f"layers must be a pair (start, stop), got {layers!r}") from None
        if not 0 <= l0 < l1 <= n_layers:
            raise InvalidArgument(f"layer range [{l0}, {l1}) out of range for {n_layers} layers")
        return l0, l1

    # -- chunks ---------------------------------------------------------------------------------

    def fetch(self, rec: DocRecord, chunk_ids: Sequence[int], layers: tuple[int, int] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
        """Validates now, then yields (c, read-only view [l1-l0, 2, n_kv_heads, len_c, head_dim])."""
        chunk_ids = [int(c) for c in chunk_ids] if not isinstance(chunk_ids, int) else chunk_ids
        l0, l1 = self.check_chunks(rec, chunk_ids, layers)

        def gen():
            pending: dict[int, Future] = {}
            if self.ahead is not None and rec.doc_id not in self.index:  # landing: ask the bucket for these now
                pending = self.ahead(rec.doc_id, [c for c in dict.fromkeys(chunk_ids)
                                                  if not self.ram.contains((rec.doc_id, c))])
            if len(chunk_ids) > 1 and not pending:  # let the disk read the missing ones while the first are verified and sent
                missing = [c for c in chunk_ids if not self.ram.contains((rec.doc_id, c))]
                if missing:
                    try:
                        self.disk.will_need(rec, missing)
                    except Exception as e:  # noqa: BLE001 - a hint only; the reads report real problems
                        log.debug("readahead hint failed: %s", e)
            for c in chunk_ids:
                arr = self.ram.get((rec.doc_id, c)) if c in pending else None
                if arr is None and c in pending:
                    arr = self._landed(rec, c, pending[c].result())
                view = (arr if arr is not None else self.chunk(rec, c))[l0:l1]
                self.counters.add(fetched_chunks=1, fetched_bytes=view.nbytes)
                yield c, view
        return gen()

    def chunk(self, rec: DocRecord, c: int) -> np.ndarray:
        """Verified, read-only chunk c [n_layers, 2, n_kv_heads, len_c, head_dim]: RAM, else disk + promote."""
        arr = self.ram.get((rec.doc_id, c))
        if arr is None:
            arr = self._load_and_promote(rec, c)
        return arr

    def _landed(self, rec: DocRecord, c: int, arr: np.ndarray) -> np.ndarray:
        """A verified chunk read ahead from the bucket: into the RAM tier (its shared file when there is one)."""
        self.ram.put((rec.doc_id, c), arr)
        cached = self.ram.get((rec.doc_id, c))
        return cached if cached is not None else arr

    def _load_and_promote(self, rec: DocRecord, c: int) -> np.ndarray:
        """Read chunk c from disk, verify it, put it in the RAM tier. The bytes are read straight into their
        RAM home (a shared file of the daemon's arena, else a new array), layer by layer, each layer checked
        against its CRC as soon as it lands: one pass over the bytes, overlapped with the disk read."""
        key = (rec.doc_id, c)
        L = rec.meta.layout
        shape, nbytes = L.chunk_shape(c), L.chunk_nbytes(c)
        crcs, step = rec.chunk_crcs[c], nbytes // L.n_layers

        def fill(out: memoryview) -> None:
            bad = []

            def check(i: int) -> None:
                if crc32c(out[i * step:(i + 1) * step]) != crcs[i]:
                    bad.append(i)

            with self._disk_read(rec, f"chunk {c}"):
                self.disk.read_into(rec, c, out, check)
            if bad:
                self._checksum_failed()
                raise DataLoss(f"chunk {c} of document {rec.doc_id} failed its checksum (layers {bad}); "
                               "refusing to return it")

        alloc = self.ram.allocator
        arr = alloc.place(key, shape, L.np_dtype, fill) if alloc is not None and nbytes <= self.ram.capacity else None
        if arr is None:  # no allocator, or no room in shared memory: a heap array (not offered to it again)
            arr = np.empty(shape, L.np_dtype)
            fill(memoryview(arr.reshape(-1).view(np.uint8)))
            arr.flags.writeable = False
        self.ram.put(key, arr, placed=True)
        return arr

    # -- L1 parts -------------------------------------------------------------------------------

    def l1(self, rec: DocRecord, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Verified, read-only L1 parts (all of them by default)."""
        specs = rec.l1 if not names else [rec.l1_spec(n) for n in names]
        out = {}
        for spec in specs:
            key = (rec.doc_id, "l1", spec.name)
            arr = self.ram.get(key)
            if arr is None:
                arr = self._load_l1(rec, spec)
                self.ram.put(key, arr)
            out[spec.name] = arr
        return out

    def _load_l1(self, rec: DocRecord, spec: TensorSpec) -> np.ndarray:
        what = f"L1 part {spec.name!r}"
        with self._disk_read(rec, what):
            arr = self.disk.read_l1(rec, spec)
        if crc32c(np.require(arr, requirements="C")) != spec.crc32c:
            self._checksum_failed()
            raise DataLoss(f"{what} of document {rec.doc_id} failed its checksum")
        return arr

    # -- disk errors ----------------------------------------------------------------------------

    @contextmanager
    def _disk_read(self, rec: DocRecord, what: str):
        """One disk read of `what` ("chunk 3", "L1 part 'keys'"): counted; a missing value is DataLoss (or
        DocumentNotFound if the document was deleted meanwhile), a wrong-size one (ValueError) DataLoss."""
        self.counters.add(disk_reads=1)
        try:
            yield
        except (FileNotFoundError, KeyError):
            if rec.doc_id not in self.index:
                raise DocumentNotFound(f"document {rec.doc_id} was deleted") from None
            self._checksum_failed()
            raise DataLoss(f"{what} of document {rec.doc_id} is missing on disk") from None
        except ValueError as e:  # wrong size
            self._checksum_failed()
            raise DataLoss(f"{what} of document {rec.doc_id} is damaged on disk: {e}") from None

    def _checksum_failed(self) -> None:
        self.counters.add(checksum_failures=1)

    # -- prefetch -------------------------------------------------------------------------------

    def prefetch(self, rec: DocRecord, chunk_ids: Sequence[int] | None = None) -> None:
        """Promote chunks (all by default) to the RAM tier in the background; returns at once."""
        ids = list(range(rec.meta.layout.n_chunks)) if chunk_ids is None else [int(c) for c in chunk_ids]
        self.check_chunks(rec, ids, None)
        if self.ahead is not None and rec.doc_id not in self.index:  # landing: its download brings every chunk
            return
        self._prefetcher.submit(self._promote, rec, ids)

    def _promote(self, rec: DocRecord, ids: list[int]) -> None:
        for c in ids:
            if self.ram.contains((rec.doc_id, c)):
                continue
            try:
                self._load_and_promote(rec, c)
            except StoreError as e:
                log.warning("prefetch of %s chunk %d failed: %s", rec.doc_id, c, e)
                return

    def wait_idle(self) -> None:
        """Return once every prefetch submitted so far has finished (the prefetcher runs them in order)."""
        self._prefetcher.submit(lambda: None).result()

    def close(self) -> None:
        """Stop prefetching: the one running finishes, queued ones are dropped."""
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
