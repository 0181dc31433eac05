"""The active KV cache: an arbitrary set of entries per layer, each with its own position.

Refill assembles caches from pieces (L1 entries, refilled chunks, the question), so a cache is not a
prefix of one sequence. Each layer holds
  k      [n_kv_heads, capacity, head_dim]  keys *after* RoPE (what attention reads),
  v      [n_kv_heads, capacity, head_dim]  values,
  pos    [capacity]                        the position each entry was rotated at,
  k_raw  [n_kv_heads, capacity, head_dim]  keys *before* RoPE, only when `keep_raw` (ingestion needs them
                                            to write the store; asking does not).
Rotated keys are kept so that RoPE is applied exactly once per entry, when it enters the cache, and a
decode step reads the cache without recomputing anything. Buffers grow by doubling, so appending one
token never copies the whole cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .rope import Rope


@dataclass
class LayerKV:
    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    k_raw: torch.Tensor | None
    n: int = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[1]


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, *, capacity: int = 256,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 keep_raw: bool = False):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.dtype, self.device, self.keep_raw = dtype, torch.device(device), keep_raw
        capacity = max(1, capacity)
        self.layers = [self._new_layer(capacity) for _ in range(n_layers)]

    @classmethod
    def for_model(cls, cfg, *, capacity: int = 256, dtype=torch.float32, device="cpu",
                  keep_raw: bool = False) -> "KVCache":
        return cls(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, capacity=capacity,
                   dtype=dtype, device=device, keep_raw=keep_raw)

    def _new_layer(self, cap: int) -> LayerKV:
        shape = (self.n_kv_heads, cap, self.head_dim)
        kw = dict(dtype=self.dtype, device=self.device)
        return LayerKV(torch.empty(shape, **kw), torch.empty(shape, **kw),
                       torch.empty(cap, dtype=torch.long, device=self.device),
                       torch.empty(shape, **kw) if self.keep_raw else None)

    def __len__(self) -> int:
        return self.layers[0].n

    def length(self, layer: int) -> int:
        return self.layers[layer].n

    def next_position(self) -> int:
        """The position after the last entry of layer 0 (0 for an empty cache): where a new token goes."""
        lay = self.layers[0]
        return int(lay.pos[lay.n - 1]) + 1 if lay.n else 0

    def reserve(self, n: int) -> None:
        """Make room for `n` more entries in every layer (one copy now instead of several later)."""
        for i, lay in enumerate(self.layers):
            if lay.n + n > lay.capacity:
                self._grow(i, lay.n + n)

    def _grow(self, i: int, need: int) -> None:
        old = self.layers[i]
        new = self._new_layer(max(need, 2 * old.capacity))
        n = old.n
        new.k[:, :n] = old.k[:, :n]
        new.v[:, :n] = old.v[:, :n]
        new.pos[:n] = old.pos[:n]
        if new.k_raw is not None and old.k_raw is not None:
            new.k_raw[:, :n] = old.k_raw[:, :n]
        new.n = n
        self.layers[i] = new

    def append(self, layer: int, k_rot: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
               k_raw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append entries k_rot, v [n_kv_heads, T, head_dim] at positions [T].

        Returns views (k, v) [n_kv_heads, n, head_dim] of the whole layer after the append.
        """
        lay = self.layers[layer]
        t = k_rot.shape[1]
        if lay.n + t > lay.capacity:
            self._grow(layer, lay.n + t)
            lay = self.layers[layer]
        s = slice(lay.n, lay.n + t)
        lay.k[:, s] = k_rot
        lay.v[:, s] = v
        lay.pos[s] = pos
        if lay.k_raw is not None:
            if k_raw is None:
                raise ValueError("this cache keeps pre-RoPE keys: append needs k_raw")
            lay.k_raw[:, s] = k_raw
        lay.n += t
        return lay.k[:, : lay.n], lay.v[:, : lay.n]

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k_rot, v, positions) of a layer: [n_kv_heads, n, head_dim] x2 and [n]."""
        lay = self.layers[layer]
        return lay.k[:, : lay.n], lay.v[:, : lay.n], lay.pos[: lay.n]

    def raw_keys(self, layer: int) -> torch.Tensor:
        """Pre-RoPE keys [n_kv_heads, n, head_dim] of a layer (needs keep_raw)."""
        lay = self.layers[layer]
        if lay.k_raw is None:
            raise ValueError("this cache does not keep pre-RoPE keys (keep_raw=False)")
        return lay.k_raw[:, : lay.n]

    def nbytes(self) -> int:
        """Bytes of the live entries (k, v; k_raw if kept)."""
        per = self.n_kv_heads * self.head_dim * torch.empty(0, dtype=self.dtype).element_size()
        mult = 3 if self.keep_raw else 2
        return sum(lay.n for lay in self.layers) * per * mult

    @classmethod
    def from_entries(cls, rope: Rope | Sequence[Rope], keys_raw: list[torch.Tensor], values: list[torch.Tensor],
                     positions: list[torch.Tensor] | torch.Tensor, *, extra_capacity: int = 64,
                     keep_raw: bool = False) -> "KVCache":
        """Assemble a cache from stored entries.

        keys_raw, values: per layer [n_kv_heads, n_l, head_dim] (pre-RoPE keys); positions: per layer
        [n_l], or one [n] tensor shared by all layers. Keys are rotated once, here, by `rope` or by
        rope[i] on layer i (a model whose layers rotate differently: `LlamaModel.ropes`).
        """
        if not keys_raw:
            raise ValueError("from_entries needs at least one layer")
        k0 = keys_raw[0]
        n_layers = len(keys_raw)
        if isinstance(positions, torch.Tensor):
            positions = [positions] * n_layers
        cap = max(k.shape[1] for k in keys_raw) + extra_capacity
        cache = cls(n_layers, k0.shape[0], k0.shape[2], capacity=cap, dtype=k0.dtype,
                    device=k0.device, keep_raw=keep_raw)
        for i in range(n_layers):
            pos = positions[i].to(k0.device)
            r = rope if isinstance(rope, Rope) else rope[i]
            cache.append(i, r.rotate(keys_raw[i], pos), values[i], pos,
                         keys_raw[i] if keep_raw else None)
        return cache
