"""FetchHandle: a fetch running in a background thread, consumed as chunks arrive.

The engine starts a fetch, computes on what it has, and takes the next chunk when it needs it:
iteration yields `(chunk_id, array)` in request order as soon as each one is complete; `result()`
waits for all of them. An error in the transfer is raised to the consumer at the point it reaches it.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

_DONE = object()


class FetchHandle:
    def __init__(self, produce: Callable[[], Iterable[tuple[int, np.ndarray]]], max_buffered: int = 0):
        self._q: queue.Queue = queue.Queue(max_buffered)
        self._cancel = threading.Event()
        self._consumed = False
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True, name="acre-fetch")
        self._thread.start()

    def _run(self, produce) -> None:
        try:
            for item in produce():
                if self._cancel.is_set():
                    return
                self._q.put(item)
            self._q.put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            self._q.put(e)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._consumed:
            raise RuntimeError("a FetchHandle can be consumed once")
        self._consumed = True
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def result(self) -> dict[int, np.ndarray]:
        """Every chunk, keyed by chunk id (waits for the transfer to finish)."""
        return dict(iter(self))

    def cancel(self) -> None:
        """Stop after the chunk in flight; later items are dropped."""
        self._cancel.set()

    def done(self) -> bool:
        return not self._thread.is_alive()
