"""Metrics: the worker's Prometheus metrics (prefix `acre_`, unit suffixes), one registry per process.

With several workers, prometheus_client runs in multiprocess mode: `acre serve` makes a fresh private
folder and sets PROMETHEUS_MULTIPROC_DIR before any worker starts (prometheus_client picks its value
class when it is first imported), each worker writes its samples there, and `/metrics` of any worker
merges every worker's files with a MultiProcessCollector. Gauges say how they merge (`livesum`: the
sum over live workers). A worker that exits cleanly removes its live gauges (`mark_process_dead`);
one that was killed is swept by the next scrape of any worker.
"""
from __future__ import annotations

import glob
import os
import re
import threading

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest,
                               multiprocess)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RATIO_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
INGEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

disable_created_metrics()  # no `_created` series beside every counter and histogram: noise to a scraper

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


class Metrics:
    """Every metric of one worker process. `multiproc_dir` set: samples go to that folder (see above)."""

    def __init__(self, multiproc_dir: str | None = None):
        self.multiproc_dir = multiproc_dir
        # In multiprocess mode the metrics live in files, not in a registry: /metrics builds one per scrape.
        reg = None if multiproc_dir else CollectorRegistry()
        self.registry = reg
        self.questions = Counter("acre_questions", "Questions answered or failed, by policy and outcome",
                                 ["policy", "outcome"], registry=reg)
        self.ttft = Histogram("acre_ask_ttft_seconds", "Time to the first answer token (from submit)",
                              ["policy"], buckets=LATENCY_BUCKETS, registry=reg)
        self.total = Histogram("acre_ask_total_seconds", "Time to the whole answer (from submit)",
                               ["policy"], buckets=LATENCY_BUCKETS, registry=reg)
        self.decode_tokens = Counter("acre_decode_tokens", "Answer tokens generated", registry=reg)
        self.reselected = Counter("acre_reselected_chunks", "Chunks re-selection joined while answers were decoded",
                                  ["policy"], registry=reg)
        self.kv_ratio = Histogram("acre_kv_ratio", "Active document entries / document tokens, per question",
                                  ["policy"], buckets=RATIO_BUCKETS, registry=reg)
        self.fetched_bytes = Counter("acre_refill_fetched_bytes", "Chunk bytes fetched from the store for refill",
                                     registry=reg)
        self.fetch_wait = Histogram("acre_refill_fetch_wait_seconds",
                                    "Time pass 2 waited for refilled chunks, per question", buckets=WAIT_BUCKETS,
                                    registry=reg)
        self.cache_hits = Counter("acre_device_cache_hits", "Device chunk-cache hits", registry=reg)
        self.cache_misses = Counter("acre_device_cache_misses", "Device chunk-cache misses", registry=reg)
        self.batch_size = Gauge("acre_batch_size", "Questions in the decoding batch now (sum over workers)",
                                multiprocess_mode="livesum", registry=reg)
        self.queue_depth = Gauge("acre_queue_depth", "Questions waiting for a batch slot (sum over workers)",
                                 multiprocess_mode="livesum", registry=reg)
        self.batch_steps = Histogram("acre_batch_size_per_step", "Questions in each batched decode step",
                                     buckets=BATCH_BUCKETS, registry=reg)
        self.ingest_seconds = Histogram("acre_ingest_seconds", "Ingest time of new documents",
                                        buckets=INGEST_BUCKETS, registry=reg)
        self.ingest_tokens = Counter("acre_ingest_tokens", "Tokens of newly ingested documents", registry=reg)
        self.ingests_running = Gauge("acre_ingests_running", "Ingests in progress (sum over workers)",
                                     multiprocess_mode="livesum", registry=reg)
        self._cache_seen = (0, 0)
        self._lock = threading.Lock()

    # ---- recording -------------------------------------------------------------------------------

    def answered(self, answer) -> None:
        """One answered question (an acre_model Answer)."""
        self.questions.labels(answer.policy, "ok").inc()
        self.ttft.labels(answer.policy).observe(answer.ttft_s)
        self.total.labels(answer.policy).observe(answer.total_s)
        self.kv_ratio.labels(answer.policy).observe(answer.kv_ratio)
        self.decode_tokens.inc(answer.n_new_tokens)
        self.reselected.labels(answer.policy).inc(len(answer.reselected_chunks))
        self.fetched_bytes.inc(answer.fetched_bytes)
        self.fetch_wait.observe(answer.fetch_wait_s)

    def failed(self, policy: str, outcome: str) -> None:
        self.questions.labels(policy, outcome).inc()

    def ingested(self, info) -> None:
        """One ingest (an acre_model DocInfo); a re-ingest that prefilled nothing is not counted."""
        if not info.existed:
            self.ingest_seconds.observe(info.seconds)
            self.ingest_tokens.inc(info.n_tokens)

    def chunk_cache(self, stats: dict) -> None:
        """Mirror the device chunk cache's running totals (DeviceChunkCache.stats()) into the counters."""
        with self._lock:
            hits, misses = stats["hits"], stats["misses"]
            seen_h, seen_m = self._cache_seen
            self._cache_seen = (hits, misses)
        self.cache_hits.inc(max(0, hits - seen_h))
        self.cache_misses.inc(max(0, misses - seen_m))

    # scheduler listener (on_step / on_done / on_error)

    def on_step(self, batch_size: int, queue_depth: int) -> None:
        self.load(batch_size, queue_depth)
        if batch_size:
            self.batch_steps.observe(batch_size)

    def load(self, batch_size: int, queue_depth: int) -> None:
        """The scheduler's load now (also set outside decode steps: an idle scheduler takes none)."""
        self.batch_size.set(batch_size)
        self.queue_depth.set(queue_depth)

    def on_done(self, answer) -> None:
        pass  # the HTTP layer records answers (it also knows about cancellations)

    def on_error(self, exc: BaseException) -> None:
        pass

    # ---- exposition ------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text of this worker, or of every worker in multiprocess mode."""
        if self.registry is not None:
            return generate_latest(self.registry)
        self.sweep_dead()
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg, path=self.multiproc_dir)
        return generate_latest(reg)

    def sweep_dead(self) -> None:
        """Remove the live gauges of workers that died without saying so (SIGKILL)."""
        for f in glob.glob(os.path.join(self.multiproc_dir, "gauge_live*_*.db")):
            m = _LIVE_GAUGE_FILE.search(os.path.basename(f))
            if m is None:
                continue
            try:
                os.kill(int(m.group(1)), 0)  # signal 0 only asks whether the process exists
            except (ProcessLookupError, PermissionError):  # none, or another user's that reused the pid
                multiprocess.mark_process_dead(int(m.group(1)), self.multiproc_dir)

    def close(self) -> None:
        """This worker is exiting: its live gauges must no longer count."""
        if self.multiproc_dir:
            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)
