"""ReadThrough: how a daemon with an object store serves a document it does not hold locally.

On a local miss the document's manifest is read from the bucket (none: the document does not exist),
then its L1 (one GET, verified against the manifest's CRC32C, kept leased in the RAM tier): from then on
the document is "landing" and served. Info and L1 answer at once; its chunks come down in the background
(`ObjectTier.download_chunks`: ranged parallel GETs in chunk order, each chunk verified as it lands, kept
leased in RAM, their disk writes waiting or on a writer thread once RAM cannot keep every part), once the
document has not been read for `land_quiet_s` (the first questions on a new host do not share it with the
download; the download pauses again while requests come, 30 s at most per range). A Fetch
of chunks that have not landed does not wait for that download: `ahead()` starts ranged GETs of just those
chunks inside their shard objects at once, verified the same way; the download takes those chunks from
there instead of reading them again, and submits no new range of its own while such requests are in flight.
When the download ends, the disk writes and commit finish, the document joins the index like any other
and its RAM leases end. A delete cancels a landing document (the download stops, the commit is skipped). A
failure anywhere (a damaged or missing object: DataLoss) drops what was staged and cached; the next request
starts over. If the RAM tier cannot even keep L1, the whole document is read and committed first, then
served from disk (the way every read-through went before).

NOTE: a landing document needs no durability of its own: a crash loses only a local copy of what the
bucket keeps (the staging is discarded at the next start).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

import numpy as np

from .errors import DataLoss, DocumentNotFound, ResourceExhausted, StoreUnavailable
from .record import DocRecord, TensorSpec
from .tiers.object_tier import Manifest, ObjectTier

log = logging.getLogger(__name__)


class _Cancelled(Exception):
    """A delete dropped the landing document: its download stops."""


class _Landing:
    """A document being read through: served (L1 from RAM, chunks from RAM or read ahead) while its
    background download goes on."""

    def __init__(self, record: DocRecord, man: Manifest):
        self.record, self.man = record, man
        self.ahead: dict[int, Future] = {}  # chunk -> its verified array, asked for ahead of the download
        self.claimed = 0  # chunks below this were claimed by the download (or read ahead of it)
        self.cancelled = False
        self.lock = threading.Lock()
        self.touched = time.monotonic()  # when a request last read it: the download waits for a quiet spell


class ReadThrough:
    def __init__(self, tier: ObjectTier, store):
        """store: the `Store` whose index, disk tier, RAM tier, budget and counters receive documents."""
        self.tier, self.store = tier, store
        self._landing: dict[str, _Landing] = {}
        self._lock = threading.Lock()
        self._asked = 0  # ranged GETs asked for by requests, in flight: the background download waits
        self._asked_cv = threading.Condition(self._lock)
        self._jobs: set[Future] = set()
        self._checked: dict[str, float] = {}  # doc_id -> when its manifest was last seen in the bucket
        # NOTE: niced (Linux: per thread): the download and commit must not slow down serving the document
        self._lander = ThreadPoolExecutor(2, thread_name_prefix="acre-s3-land", initializer=_nice)

    def record(self, doc_id: str) -> DocRecord | None:
        """The document's record once it is readable here (read through from the bucket if need be), or
        None if the bucket does not have it either."""
        with self.tier.doc_lock(doc_id):
            rec = self.store.index.find(doc_id)
            if rec is None:
                with self._lock:
                    land = self._landing.get(doc_id)
                if land is not None:
                    land.touched = time.monotonic()
                rec = land.record if land is not None else None
            return rec if rec is not None else self._fetch(doc_id)

    def landing(self, doc_id: str) -> bool:
        with self._lock:
            return doc_id in self._landing

    def recheck(self, doc_id: str) -> bool:
        """False if the document was deleted from the bucket (through another daemon): its local copy must
        go. The manifest is looked at (one HEAD) only when the last look is older than `recheck_s`; an
        unreachable bucket keeps the local copy in service (and counts as a look)."""
        now = time.monotonic()
        with self._lock:
            last = self._checked.get(doc_id)
            if last is not None and now - last < self.tier.config.recheck_s:
                return True
            self._checked[doc_id] = now
        try:
            there = self.tier.published(doc_id)
        except StoreUnavailable as e:
            log.warning("document %s: could not check the bucket (%s); serving the local copy", doc_id, e)
            return True
        if not there:
            with self._lock:
                self._checked.pop(doc_id, None)
        return there

    def forget(self, doc_id: str) -> bool:
        """A delete: a landing copy is dropped (its download stops, its commit is skipped). True if there was one."""
        with self._lock:
            self._checked.pop(doc_id, None)
            land = self._landing.pop(doc_id, None)
            if land is not None:
                land.cancelled = True
                self._asked_cv.notify_all()
        if land is not None:
            self.store.ram.drop(lambda k: k[0] == doc_id)
        return land is not None

    def ahead(self, doc_id: str, chunk_ids: list[int]) -> dict[int, Future]:
        """Chunks of a landing document asked for now (not in the RAM tier): a future of each one's
        verified array, read with ranged GETs of just those chunks, ahead of the background download (or
        the download's own read when it already has it). {} if the document is not landing."""
        with self._lock:
            land = self._landing.get(doc_id)
        if not chunk_ids:
            return {}
        if land is None:  # committed meanwhile (read from disk), else its download failed: from the bucket
            if doc_id in self.store.index:
                return {}
            man = self.tier.manifest(doc_id)
            if man is None:
                raise DocumentNotFound(f"document {doc_id} was deleted")
            return self._read_ahead(man, list(dict.fromkeys(chunk_ids)), None)
        land.touched = time.monotonic()
        out: dict[int, Future] = {}
        with land.lock:
            new = []
            for c in dict.fromkeys(chunk_ids):
                f = land.ahead.get(c)
                if f is not None:
                    out[c] = f
                else:
                    new.append(c)
            if new:
                out.update(self._read_ahead(land.man, new, land))
        return out

    def _read_ahead(self, man: Manifest, chunk_ids: list[int], land: _Landing | None) -> dict[int, Future]:
        """Start ranged GETs of these chunks; the ones the download has not claimed yet are left for it."""
        out: dict[int, Future] = {}
        for group, fut in self.tier.read_chunks(man, chunk_ids):
            with self._lock:
                self._asked += 1
            for c in group:
                out[c] = Future()
                if land is not None and c >= land.claimed:
                    land.ahead[c] = out[c]
            fut.add_done_callback(lambda f, group=group, out=out: self._asked_done(f, group, out))
        return out

    def _asked_done(self, fut: Future, group: list[int], out: dict[int, Future]) -> None:
        e = fut.exception()
        if isinstance(e, DataLoss):
            self.store.counters.add(checksum_failures=1)
        for j, c in enumerate(group):
            if e is not None:
                out[c].set_exception(e)
            else:
                out[c].set_result(fut.result()[j])
        with self._lock:
            self._asked -= 1
            self._asked_cv.notify_all()

    def _fetch(self, doc_id: str) -> DocRecord | None:
        st = self.store
        man = self.tier.manifest(doc_id)
        if man is None:
            return None
        with self._lock:
            self._checked[doc_id] = time.monotonic()
        record = DocRecord(man.record.meta, man.record.l1, man.record.chunk_crcs)
        land = _Landing(record, man)
        nbytes = record.meta.nbytes
        try:
            st.budget.reserve(nbytes)
        except ResourceExhausted:  # landing documents hold room until committed (then they can be evicted)
            self.wait_idle()
            st.budget.reserve(nbytes)
        staging, leased, writes, deferred = None, [], [], []
        writer = ThreadPoolExecutor(1, thread_name_prefix="acre-s3-write")

        def keep(key, arr: np.ndarray, write, *args) -> None:
            """Into the RAM tier (leased); the disk write waits for the commit while every part so far
            stayed in RAM, else it starts now on the writer thread (memory stays bounded). (A chunk read
            ahead for a request may be in the RAM tier already: it is leased the same.)"""
            st.ram.put(key, arr)
            if st.ram.lease(key) is not None:
                leased.append(key)
                if not writes:
                    deferred.append((write, *args))
                    return
            flush()
            writes.append(writer.submit(write, *args))

        def flush() -> None:
            writes.extend(writer.submit(*d) for d in deferred)
            deferred.clear()

        def on_l1(spec: TensorSpec, arr: np.ndarray) -> None:
            keep((doc_id, "l1", spec.name), arr, staging.write_l1, spec, arr)

        def on_chunk(c: int, arr: np.ndarray) -> None:
            if land.cancelled:
                raise _Cancelled()
            keep((doc_id, c), arr, staging.write_chunk, c, arr)

        def end(ok: bool) -> None:
            """Undo what a failed read-through left (staging, RAM copies); then free its resources."""
            if not ok:
                with self._lock:
                    ours = self._landing.get(doc_id) is land
                    if ours:
                        self._landing.pop(doc_id)
                deferred.clear()
                for f in writes:
                    f.cancel()
                writer.shutdown(wait=True)
                if staging is not None:
                    staging.abort()
                if ours:  # (a delete already dropped them otherwise; a new read-through may own them now)
                    st.ram.drop(lambda k: k[0] == doc_id)
            writer.shutdown(wait=False)
            for k in leased:
                st.ram.release(k)
            st.budget.release(nbytes)

        def commit(landing: bool) -> None:
            """Wait for the disk writes, commit and index (skipped if a delete dropped a landing copy)."""
            ok = False
            try:
                flush()
                for f in writes:
                    f.result()
                with st._commit_lock:
                    with self._lock:
                        wanted = not landing or self._landing.get(doc_id) is land
                    if not wanted or st.index.find(doc_id) is not None:  # deleted, or a put committed it
                        staging.abort()
                    else:
                        staging.commit(record)
                        st.index.add(record)
                        log.info("read document %s through from %s (%d bytes)", doc_id, self.tier.url, nbytes)
                    with self._lock:  # only now: a reader finds it in the index or landing, never neither
                        if self._landing.get(doc_id) is land:
                            self._landing.pop(doc_id)
                ok = True
            finally:
                end(ok)

        def claim(first: int, stop: int) -> list[tuple[int, int]]:
            """The runs of chunks [first, stop) the download reads itself (not read ahead for a request)."""
            with land.lock:
                land.claimed = stop
                runs, a = [], None
                for c in range(first, stop):
                    if c in land.ahead:
                        if a is not None:
                            runs.append((a, c))
                        a = None
                    elif a is None:
                        a = c
                if a is not None:
                    runs.append((a, stop))
                return runs

        counted = []  # a damaged chunk read ahead was counted there (checksum_failures) already

        def take(c: int) -> np.ndarray | None:
            with land.lock:
                f = land.ahead.pop(c, None)
            try:
                return None if f is None else f.result()
            except DataLoss:
                counted.append(c)
                raise

        quiet = self.tier.config.land_quiet_s

        def gate() -> None:
            """Requests go first: the download submits its next range once their own GETs are done and no
            request has read the document for `land_quiet_s` (the first questions of a new host do not share
            its CPU and network with the download); it waits 30 s at most per range."""
            give_up = time.monotonic() + 30
            with self._lock:
                while not land.cancelled:
                    now = time.monotonic()
                    calm = quiet - (now - land.touched)
                    if (self._asked == 0 and calm <= 0) or now >= give_up:
                        break
                    self._asked_cv.wait(give_up - now if calm <= 0 else min(calm, give_up - now))
            if land.cancelled:
                raise _Cancelled()

        def fail(e: BaseException) -> None:
            if isinstance(e, DataLoss) and not counted:
                st.counters.add(checksum_failures=1)
            end(False)

        try:
            staging = st.disk.stage(doc_id, record.meta.layout, record.l1)
            for spec, arr in self.tier.read_l1(man):
                on_l1(spec, arr)
            if len(leased) < len(record.l1):  # the RAM tier cannot keep L1: all now, then served from disk
                self.tier.download_chunks(man, on_chunk)
        except BaseException as e:
            fail(e)
            raise
        self.tier._count(read_throughs=1)
        if len(leased) < len(record.l1):
            commit(landing=False)
            return record
        with self._lock:
            self._landing[doc_id] = land

        def download() -> None:
            try:
                self.tier.download_chunks(man, on_chunk, claim, take, gate)
            except BaseException as e:  # noqa: BLE001 - dropped; the next request reads it through again
                if not isinstance(e, _Cancelled):
                    log.warning("reading document %s through from %s failed: %s", doc_id, self.tier.url, e)
                fail(e)
                return
            try:
                commit(landing=True)
            except Exception as e:  # noqa: BLE001 - a background commit: the document is read through again next time
                log.warning("local copy of document %s from the bucket not kept: %s", doc_id, e)

        job = self._lander.submit(download)
        with self._lock:
            self._jobs.add(job)
        job.add_done_callback(self._job_done)
        return record

    def _job_done(self, job: Future) -> None:
        with self._lock:
            self._jobs.discard(job)

    @property
    def n_landing(self) -> int:
        """Documents read through and served (from RAM, or read ahead) whose download and commit have not ended yet."""
        with self._lock:
            return len(self._landing)

    def wait_idle(self) -> None:
        """Return once every document landing so far is on disk (or dropped)."""
        with self._lock:
            jobs = list(self._jobs)
        futures_wait(jobs)

    def close(self) -> None:
        """Let the downloads and commits in progress finish."""
        with self._lock:
            for land in self._landing.values():
                land.cancelled = True
            self._asked_cv.notify_all()
        self._lander.shutdown(wait=True)


def _nice() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux: the thread runs at the process's priority
        pass
