"""Refill: bring a plan's chunks onto the device and assemble the active cache layer by layer.

Chunks already in the worker's device chunk cache (the "GPU tier": an LRU by bytes) are used at once.
The others are fetched from the store in layer groups by a background thread, so that while layer l
computes, the bytes of later layers are in flight. `Refill.before_layer` is the forward pass's hook:
it waits (only if needed) for its layer's group, then installs the layer's document entries.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

import torch

from .doc_state import DocState, from_numpy
from .kv_cache import KVCache
from .policies.base import Plan

GROUP_LAYERS = 5  # layers per fetch: small enough to overlap, large enough to amortise a call


class DeviceChunkCache:
    """LRU of whole chunks [n_layers, 2, n_kv_heads, len, head_dim] on the worker's device, by bytes.

    An OrderedDict gives O(1) move-to-end on a hit and O(1) eviction of the least recently used.
    """

    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes
        self._d: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0
        self._lock = threading.Lock()

    def get(self, doc_id: str, c: int) -> torch.Tensor | None:
        with self._lock:
            t = self._d.get((doc_id, c))
            if t is None:
                self.misses += 1
                return None
            self._d.move_to_end((doc_id, c))
            self.hits += 1
            return t

    def put(self, doc_id: str, c: int, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if size > self.capacity:
            return
        with self._lock:
            old = self._d.pop((doc_id, c), None)
            if old is not None:
                self.nbytes -= old.numel() * old.element_size()
            while self._d and self.nbytes + size > self.capacity:
                _, ev = self._d.popitem(last=False)
                self.nbytes -= ev.numel() * ev.element_size()
                self.evictions += 1
            self._d[(doc_id, c)] = t
            self.nbytes += size

    def drop_doc(self, doc_id: str) -> None:
        with self._lock:
            for key in [k for k in self._d if k[0] == doc_id]:
                t = self._d.pop(key)
                self.nbytes -= t.numel() * t.element_size()

    def stats(self) -> dict:
        return {"bytes": self.nbytes, "capacity": self.capacity, "chunks": len(self._d), "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}


class Refill:
    """One question's refill: fetch (async, layer groups) + per-layer assembly of the active cache."""

    def __init__(self, model, doc: DocState, plan: Plan, store, chunk_cache: DeviceChunkCache,
                 group_layers: int | None = None, q_len: int = 0, extra_capacity: int = 0):
        self.model, self.doc, self.plan, self.store, self.cc = model, doc, plan, store, chunk_cache
        cfg = model.cfg
        self.L, self.C = cfg.num_hidden_layers, doc.chunk_size
        self.device, self.dtype = model.device, model.dtype
        n = doc.n_tokens
        refilled = torch.zeros(doc.n_chunks, dtype=torch.bool)
        if plan.chunks:
            refilled[torch.tensor(plan.chunks)] = True
        # Which attend-set entries each layer uses: those of chunks not refilled (if the plan uses L1),
        # plus token-level picks that the attend set already holds.
        l1_chunk = doc.l1_chunk.cpu()
        base = (~refilled[l1_chunk]) if plan.use_l1 else torch.zeros(doc.n_l1, dtype=torch.bool)
        l1_pos = doc.l1_pos.cpu()
        in_l1 = torch.zeros(n, dtype=torch.bool)
        in_l1[l1_pos] = True
        self.l1_sel: list[torch.Tensor] = []  # per layer: indices into the attend set
        self.tok_sel: list[torch.Tensor] = []  # per layer: token ids to take from fetched chunks
        needed = set(plan.chunks)
        in_refilled = refilled.repeat_interleave(self.C)[:n]  # [n] token lies in a refilled chunk
        for l in range(self.L):
            sel = base.clone()
            extra = torch.empty(0, dtype=torch.long)
            if plan.tokens is not None:
                want = plan.tokens[l].cpu() & ~in_refilled
                sel |= want[l1_pos]
                extra = (want & ~in_l1).nonzero().flatten()
                needed.update((extra // self.C).unique().tolist())
            self.l1_sel.append(sel.nonzero().flatten())
            self.tok_sel.append(extra)
        self.needed = sorted(needed)
        self.n_active = [int(self.l1_sel[l].numel() + self.tok_sel[l].numel()
                             + sum(min(self.C, n - c * self.C) for c in plan.chunks)) for l in range(self.L)]
        # Focus mode renumbers document entries 0..n_l-1; the question continues after the longest layer.
        self.q_start = max(self.n_active) if plan.mode == "focus" else n
        self.cache = KVCache(self.L, cfg.num_key_value_heads, cfg.head_dim, dtype=self.dtype, device=self.device,
                             capacity=max(self.n_active) + q_len + extra_capacity)
        # chunk data: from the device cache now, or per layer group from the store
        self.local: dict[int, torch.Tensor] = {}
        missing = []
        for c in self.needed:
            t = chunk_cache.get(doc.doc_id, c)
            if t is None:
                missing.append(c)
            else:
                self.local[c] = t
        self.missing = missing
        group_layers = group_layers or GROUP_LAYERS
        self.group_size = group_layers
        self.groups = [(s, min(self.L, s + group_layers)) for s in range(0, self.L, group_layers)]
        self.group_data: list[dict[int, torch.Tensor]] = [{} for _ in self.groups]
        self.group_ready = [threading.Event() for _ in self.groups]
        self.error: BaseException | None = None
        self.fetch_s = 0.0
        self.wait_s = 0.0
        self.fetched_bytes = 0
        self._thread = None
        if missing:
            self._thread = threading.Thread(target=self._fetch_all, name="acre-refill", daemon=True)
            self._thread.start()
        else:
            for e in self.group_ready:
                e.set()

    def _fetch_all(self) -> None:
        t0 = time.perf_counter()
        try:
            for g, (l0, l1) in enumerate(self.groups):
                for c, arr in self.store.fetch(self.doc.doc_id, self.missing, layers=(l0, l1)):
                    self.fetched_bytes += arr.nbytes
                    self.group_data[g][c] = from_numpy(arr, self.dtype, self.device)
                self.group_ready[g].set()
        except BaseException as e:  # re-raised in the compute thread, which owns error reporting
            self.error = e
            for ev in self.group_ready:
                ev.set()
        finally:
            self.fetch_s = time.perf_counter() - t0

    def _layer_chunk(self, c: int, layer: int) -> torch.Tensor:
        """[2, Hkv, len, D] of chunk c at layer."""
        if c in self.local:
            return self.local[c][layer]
        g = layer // self.group_size
        return self.group_data[g][c][layer - self.groups[g][0]]

    def before_layer(self, layer: int, cache: KVCache) -> None:
        g = layer // self.group_size
        if not self.group_ready[g].is_set():
            t0 = time.perf_counter()
            self.group_ready[g].wait()
            self.wait_s += time.perf_counter() - t0
        if self.error is not None:
            raise self.error
        doc = self.doc
        ks, vs, ps = [], [], []
        sel = self.l1_sel[layer]
        if sel.numel():
            sel_d = sel.to(doc.l1_keys.device)
            ks.append(doc.l1_keys[layer][:, sel_d])
            vs.append(doc.l1_values[layer][:, sel_d])
            ps.append(doc.l1_pos[sel_d].to(self.device))
        n = doc.n_tokens
        for c in self.plan.chunks:
            kv = self._layer_chunk(c, layer)
            ks.append(kv[0])
            vs.append(kv[1])
            ps.append(torch.arange(c * self.C, min(n, (c + 1) * self.C), device=self.device))
        extra = self.tok_sel[layer]
        if extra.numel():
            for c in (extra // self.C).unique().tolist():
                local = extra[(extra // self.C) == c] - c * self.C
                kv = self._layer_chunk(c, layer)[:, :, local.to(self.device)]
                ks.append(kv[0])
                vs.append(kv[1])
                ps.append(local.to(self.device) + c * self.C)
        if not ks:
            return
        k, v, pos = torch.cat(ks, 1), torch.cat(vs, 1), torch.cat(ps)
        order = pos.argsort()
        k, v, pos = k[:, order], v[:, order], pos[order]
        rot_pos = torch.arange(pos.numel(), device=self.device) if self.plan.mode == "focus" else pos
        cache.append(layer, self.model.rope.rotate(k, rot_pos), v, rot_pos)

    def finish(self, raise_error: bool = True) -> None:
        """Wait for the fetch thread; put fully fetched chunks into the device chunk cache."""
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            if raise_error:
                raise self.error
            return
        for c in self.missing:
            if all(c in d for d in self.group_data):
                self.cc.put(self.doc.doc_id, c, torch.cat([d[c] for d in self.group_data], 0))

    @property
    def kv_ratio(self) -> float:
        return sum(self.n_active) / len(self.n_active) / self.doc.n_tokens
