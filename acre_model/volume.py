"""The refill volume: how many chunks a question gets, and which neighbours come along.

The seed's rule: `k = k_min + (k_max - k_min) * H(p) / log(n_chunks)`. A locator distribution with one
sharp peak (a single needle) has low entropy and refills few chunks; spread attention refills more.
A fact can straddle a chunk boundary, so each selected chunk may bring its neighbours.
"""
from __future__ import annotations

import math

import torch


def normalized_entropy(p: torch.Tensor) -> float:
    """H(p) / log(n) in [0, 1] (0 for a single chunk)."""
    n = p.numel()
    if n <= 1:
        return 0.0
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum() / math.log(n))


def entropy_to_k(h_norm: float, k_min: int, k_max: int, n_chunks: int) -> int:
    """k = k_min + (k_max - k_min) * H(p) / log(n_chunks), clamped to [1, n_chunks]. Monotone in H."""
    k = k_min + (k_max - k_min) * min(max(h_norm, 0.0), 1.0)
    return int(max(1, min(n_chunks, round(k))))


def with_neighbors(chunks: list[int], radius: int, n_chunks: int) -> list[int]:
    out = set()
    for c in chunks:
        out.update(range(max(0, c - radius), min(n_chunks, c + radius + 1)))
    return sorted(out)
