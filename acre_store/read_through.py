"""ReadThrough: how a daemon with an object store serves a document it does not hold locally.

On a local miss the document's manifest is read from the bucket (none: the document does not exist),
then its L1 and chunks with ranged parallel GETs (`ObjectTier.download`), each verified against the
manifest's CRC32C as it lands. Verified parts go straight into the RAM tier, leased so that they stay
there; their disk writes wait (on a writer thread once the RAM tier cannot keep every part). The document
is served from RAM as soon as the download ends: the disk writes and commit finish in the background, then the document joins the
index like any other and its RAM leases end. Until then it is "landing": `record()` returns it, a delete
cancels it. A failure anywhere drops what was staged and cached; the next request starts over.

NOTE: a landing document needs no durability of its own: a crash loses only a local copy of what the
bucket keeps (the staging is discarded at the next start).
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import DataLoss, ResourceExhausted
from .record import DocRecord, TensorSpec
from .tiers.object_tier import ObjectTier

log = logging.getLogger(__name__)


class ReadThrough:
    def __init__(self, tier: ObjectTier, store):
        """store: the `Store` whose index, disk tier, RAM tier, budget and counters receive documents."""
        self.tier, self.store = tier, store
        self._landing: dict[str, DocRecord] = {}
        self._lock = threading.Lock()
        # NOTE: niced (Linux: per thread): the commit must not slow down serving the document it lands
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="acre-s3-commit", initializer=_nice)

    def record(self, doc_id: str) -> DocRecord | None:
        """The document's record once it is readable here (read through from the bucket if need be), or
        None if the bucket does not have it either."""
        with self.tier.doc_lock(doc_id):
            rec = self.store.index.find(doc_id)
            if rec is None:
                with self._lock:
                    rec = self._landing.get(doc_id)
            return rec if rec is not None else self._fetch(doc_id)

    def forget(self, doc_id: str) -> bool:
        """A delete: a landing copy is dropped (its commit is skipped). True if there was one."""
        with self._lock:
            gone = self._landing.pop(doc_id, None) is not None
        if gone:
            self.store.ram.drop(lambda k: k[0] == doc_id)
        return gone

    def _fetch(self, doc_id: str) -> DocRecord | None:
        st = self.store
        man = self.tier.manifest(doc_id)
        if man is None:
            return None
        record = DocRecord(man.record.meta, man.record.l1, man.record.chunk_crcs)
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
            stayed in RAM, else it starts now on the writer thread (memory stays bounded)."""
            if st.ram.put(key, arr) and st.ram.lease(key) is not None:
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
            keep((doc_id, c), arr, staging.write_chunk, c, arr)

        def end(ok: bool) -> None:
            """Undo what a failed read-through left (staging, RAM copies); then free its resources."""
            if not ok:
                with self._lock:
                    self._landing.pop(doc_id, None)
                deferred.clear()
                for f in writes:
                    f.cancel()
                writer.shutdown(wait=True)
                if staging is not None:
                    staging.abort()
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
                        wanted = self._landing.pop(doc_id, None) is not None or not landing
                    if not wanted or st.index.find(doc_id) is not None:  # deleted, or a put committed it
                        staging.abort()
                    else:
                        staging.commit(record)
                        st.index.add(record)
                        log.info("read document %s through from %s (%d bytes)", doc_id, self.tier.url, nbytes)
                ok = True
            finally:
                end(ok)

        try:
            staging = st.disk.stage(doc_id, record.meta.layout, record.l1)
            self.tier.download(man, on_l1, on_chunk)
        except BaseException as e:
            if isinstance(e, DataLoss):
                st.counters.add(checksum_failures=1)
            end(False)
            raise
        if len(leased) < record.meta.layout.n_chunks + len(record.l1):
            commit(landing=False)  # the RAM tier could not keep it all: serve it from disk once committed
            self.tier._count(read_throughs=1)
            return record
        with self._lock:
            self._landing[doc_id] = record
        self._committer.submit(_logged, commit, doc_id)
        self.tier._count(read_throughs=1)
        return record

    @property
    def n_landing(self) -> int:
        """Documents read through and served from RAM whose disk commit has not ended yet."""
        with self._lock:
            return len(self._landing)

    def wait_idle(self) -> None:
        """Return once every landing document committed so far is on disk (or dropped)."""
        self._committer.submit(lambda: None).result()

    def close(self) -> None:
        """Let the commits in progress finish."""
        self._committer.shutdown(wait=True)


def _nice() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux: the thread runs at the process's priority
        pass


def _logged(commit, doc_id: str) -> None:
    try:
        commit(landing=True)
    except Exception as e:  # noqa: BLE001 - a background commit: the document is read through again next time
        log.warning("local copy of document %s from the bucket not kept: %s", doc_id, e)
