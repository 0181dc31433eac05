"""StreamGuard: what streaming calls (Put, GetL1, Fetch) may hold of the daemon's handler threads.

Each streaming call holds one gRPC handler thread for as long as it lasts, so a few clients that stop
reading (or a Put that sends its header and nothing more, with no deadline) could hold every thread, and
Info, List, Stats, and every other client's calls would then wait forever. So:

- at most `max_streams` streaming calls run at once (the server keeps its other threads for control calls);
  one more is refused at once with UNAVAILABLE (clients retry with backoff);
- at most `max_per_client` of them come from one remote host (a TCP peer's address);
- a call that makes no progress (no message read or sent) for `idle_s` seconds is cancelled.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from .errors import StoreUnavailable

log = logging.getLogger(__name__)


class _Stream:
    """One streaming call; its handler sets `last` (time.monotonic()) at each message read or sent."""

    __slots__ = ("context", "client", "last")

    def __init__(self, context, client: str):
        self.context, self.client, self.last = context, client, time.monotonic()


class StreamGuard:
    def __init__(self, max_streams: int, max_per_client: int, idle_s: float):
        self.max_streams, self.max_per_client, self.idle_s = max_streams, max_per_client, idle_s
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._per_client: collections.Counter = collections.Counter()
        self.refused = self.idle_cancelled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="acre-stream-guard")
        self._thread.start()

    def admit(self, context) -> _Stream:
        """Register a streaming call; StoreUnavailable if the daemon (or this client's share) is full."""
        client = _client_of(context.peer() or "")
        with self._lock:
            if len(self._streams) >= self.max_streams:
                self.refused += 1
                raise StoreUnavailable(f"daemon busy: {len(self._streams)} streaming calls in progress; retry later")
            if client.startswith(("ipv4:", "ipv6:")) and self._per_client[client] >= self.max_per_client:
                self.refused += 1
                raise StoreUnavailable(f"too many streaming calls from {client} in progress ({self.max_per_client})")
            s = _Stream(context, client)
            self._streams.add(s)
            self._per_client[client] += 1
        return s

    def done(self, s: _Stream) -> None:
        with self._lock:
            if s in self._streams:
                self._streams.discard(s)
                self._per_client[s.client] -= 1
                if not self._per_client[s.client]:
                    del self._per_client[s.client]

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.idle_s / 4)):
            now = time.monotonic()
            with self._lock:
                idle = [s for s in self._streams if now - s.last > self.idle_s]
                self.idle_cancelled += len(idle)
            for s in idle:
                log.info("cancelling a streaming call from %s: no progress for %.0fs", s.client, self.idle_s)
                s.context.cancel()  # its handler's blocked read or send returns; the call ends
                self.done(s)

    def stats(self) -> dict:
        with self._lock:
            return {"active": len(self._streams), "max": self.max_streams, "refused": self.refused,
                    "idle_cancelled": self.idle_cancelled}

    def close(self) -> None:
        self._stop.set()


def _client_of(peer: str) -> str:
    """'ipv4:10.0.0.1:5555' -> 'ipv4:10.0.0.1' (a host, whatever its connection); 'unix:...' as is."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer
