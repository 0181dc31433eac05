"""`ChunkFetcher`: brings one question's chunks onto the device while pass 2 computes.

The chunks may belong to several documents (a library question: `more=`): one thread
fetches them all in one pass, layer group by layer group, every document's chunks within each group.

Chunks already in the worker's device chunk cache are used at once. The others are fetched from the
store by a background thread in layer groups (`GROUP_LAYERS` layers per call), in layer order, so that
while layer l computes, the bytes of later layers are in flight. `chunk_layer(c, layer)` waits (only if
needed) for its layer's group. As a context manager it always ends the fetch: on exit it stops the
thread, re-raises a fetch error, and puts completely fetched chunks into the device chunk cache.

A hybrid model's document stores its global layers only: `n_layers` is then the stored layers, and
`slots(layer)` maps a model layer to its index in a stored chunk (`DocState.slot`).
"""
from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass

import torch

from .device_chunk_cache import DeviceChunkCache
from .doc_state import from_numpy, host_tensor

GROUP_LAYERS = 5  # layers per fetch: small enough to overlap, large enough to amortise a call


class CudaStager:
    """Host-to-GPU copies of fetched chunks that overlap compute: each chunk is copied into a pinned host
    buffer, then to the device with a non-blocking copy on a side stream; an event recorded after a
    layer group's copies orders them before the first layer that reads the group."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._pinned: list[torch.Tensor] = []  # alive until their copies have run

    def to_device(self, arr, dtype: torch.dtype) -> torch.Tensor:
        with warnings.catch_warnings():  # a read-only array (the store's shared memory) is only read here
            warnings.simplefilter("ignore", UserWarning)
            host = host_tensor(arr, dtype)
        pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        pinned.copy_(host)
        self._pinned.append(pinned)
        with torch.cuda.stream(self.stream):
            out = pinned.to(self.device, non_blocking=True)
            return out.to(dtype) if out.is_floating_point() and out.dtype != dtype else out

    def group_done(self) -> torch.cuda.Event:
        ev = torch.cuda.Event()
        ev.record(self.stream)
        return ev

    def before_use(self, event: torch.cuda.Event, tensors) -> None:
        """Make the compute stream wait for a group's copies; tell the allocator the tensors are used there."""
        main = torch.cuda.current_stream(self.device)
        main.wait_event(event)
        for t in tensors:
            t.record_stream(main)

    def finish(self) -> None:
        self.stream.synchronize()
        self._pinned.clear()


@dataclass
class FetchStats:
    fetch_s: float = 0.0  # time the fetch thread spent (0 when every chunk was on the device)
    wait_s: float = 0.0  # time the forward pass waited for bytes
    fetched_bytes: int = 0  # bytes brought from the store
    device_hits: int = 0  # chunks found in the device chunk cache


class ChunkFetcher:
    def __init__(self, store, doc_id: str, chunks: list[int], n_layers: int, chunk_cache: DeviceChunkCache,
                 dtype: torch.dtype, device: torch.device, group_layers: int | None = None,
                 more: dict[str, list[int]] | None = None, slots=None):
        """Fetches `chunks` of `doc_id`, and (`more`) the listed chunks of other documents in the same pass.
        `slots(layer)`: a model layer's index in a stored chunk (default: the layer itself)."""
        self.store, self.doc_id, self.cc = store, doc_id, chunk_cache
        self.slots = slots or (lambda layer: layer)
        self.dtype, self.device = dtype, device
        wanted = {doc_id: chunks, **(more or {})}
        # (doc, chunk) -> [n_layers, 2, Hkv, len, D] from the device cache
        self.local: dict[tuple[str, int], torch.Tensor] = {}
        self.missing_by_doc: dict[str, list[int]] = {}
        for d, cs in wanted.items():
            for c in cs:
                t = chunk_cache.get(d, c)
                if t is None:
                    self.missing_by_doc.setdefault(d, []).append(c)
                else:
                    self.local[(d, c)] = t
        self.missing = [(d, c) for d, cs in self.missing_by_doc.items() for c in cs]
        self.group_size = group_layers or GROUP_LAYERS
        self.groups = [(s, min(n_layers, s + self.group_size)) for s in range(0, n_layers, self.group_size)]
        self.group_data: list[dict[tuple[str, int], torch.Tensor]] = [{} for _ in self.groups]
        self.group_ready = [threading.Event() for _ in self.groups]
        self.stats = FetchStats(device_hits=len(self.local))
        cuda = torch.device(device).type == "cuda"
        self.stager = CudaStager(torch.device(device)) if cuda and self.missing else None
        self.group_events: list = [None] * len(self.groups)
        self._synced = [False] * len(self.groups)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ChunkFetcher":
        if self.missing:
            self._thread = threading.Thread(target=self._fetch_all, name="acre-refill", daemon=True)
            self._thread.start()
        else:
            for e in self.group_ready:
                e.set()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(failed=exc_type is not None)

    def finish(self, failed: bool = False) -> None:
        """Join the fetch thread. `failed`: pass 2 failed or was dropped: fetch no further group and
        raise nothing (its own error wins). Otherwise re-raise a fetch error, or fill the device cache."""
        if failed:
            self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.stager is not None:
            self.stager.finish()
        if failed:
            return
        if self.error is not None:
            raise self.error
        for key in self.missing:
            if all(key in d for d in self.group_data):
                self.cc.put(key[0], key[1], torch.cat([d[key] for d in self.group_data], 0))

    def _fetch_all(self) -> None:
        t0 = time.perf_counter()
        try:
            for g, (l0, l1) in enumerate(self.groups):
                if self._stop.is_set():
                    break
                for d, missing in self.missing_by_doc.items():
                    for c, arr in self.store.fetch(d, missing, layers=(l0, l1)):
                        self.stats.fetched_bytes += arr.nbytes
                        if self.stager is not None:
                            self.group_data[g][(d, c)] = self.stager.to_device(arr, self.dtype)
                        else:
                            self.group_data[g][(d, c)] = from_numpy(arr, self.dtype, self.device)
                if self.stager is not None:
                    self.group_events[g] = self.stager.group_done()
                self.group_ready[g].set()
        except BaseException as e:  # re-raised in the compute thread, which owns error reporting
            self.error = e
        finally:
            self.stats.fetch_s = time.perf_counter() - t0
            for ev in self.group_ready:  # wake a waiting layer whatever happened
                ev.set()

    def chunk_layer(self, c: int, layer: int, doc_id: str | None = None) -> torch.Tensor:
        """[2, n_kv_heads, len_c, head_dim] of chunk c (of `doc_id`, default the first document) at model
        layer `layer` (pre-RoPE keys)."""
        layer = self.slots(layer)
        key = (doc_id or self.doc_id, c)
        if key in self.local:
            return self.local[key][layer]
        g = layer // self.group_size
        if not self.group_ready[g].is_set():
            t0 = time.perf_counter()
            self.group_ready[g].wait()
            self.stats.wait_s += time.perf_counter() - t0
        if self.error is not None:
            raise self.error
        if self.stager is not None and not self._synced[g]:
            self.stager.before_use(self.group_events[g], self.group_data[g].values())
            self._synced[g] = True
        return self.group_data[g][key][layer - self.groups[g][0]]
