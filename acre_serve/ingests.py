"""IngestTracker: the ingests running in this worker and how far each has got (`GET /v1/ingests`)."""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict, dataclass


@dataclass
class IngestProgress:
    id: int
    name: str
    n_tokens: int  # 0 until the document is tokenized
    done_tokens: int  # prefilled so far
    started: float  # unix time

    def to_dict(self) -> dict:
        return asdict(self)


class IngestTracker:
    """Thread-safe: ingests run in worker threads and report progress while requests read it."""

    def __init__(self):
        self._running: dict[int, IngestProgress] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, name: str) -> IngestProgress:
        with self._lock:
            p = IngestProgress(next(self._ids), name, 0, 0, time.time())
            self._running[p.id] = p
            return p

    def update(self, p: IngestProgress, done: int, total: int) -> None:
        with self._lock:
            p.done_tokens, p.n_tokens = done, total

    def finish(self, p: IngestProgress) -> None:
        with self._lock:
            self._running.pop(p.id, None)

    def running(self) -> list[dict]:
        with self._lock:
            return [p.to_dict() for p in self._running.values()]
