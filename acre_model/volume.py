"""The refill volume: how many chunks a question gets, and which neighbours come along.

The seed's rule (`acre-entropy`): `k = k_min + (k_max - k_min) * H(p) / log(n_chunks)`. A locator
distribution with one sharp peak (a single needle) has low entropy and refills few chunks; spread
attention refills more. Measured, it picks k = 2 on nearly every question: the entropy of a 64-chunk
distribution hardly moves between one needle and four.

The adaptive rule (`acre`): the smallest set of top chunks whose share of p reaches a coverage level
(`coverage_to_k`): one dominant peak is covered by one chunk, evidence spread over several places needs
as many chunks as it has places. Both rules are bounded by `k_max` and by a KV budget (`budget_k`).
A fact can straddle a chunk boundary, so each selected chunk may bring its neighbours.

Distinct places (`distinct_order`, the policies' opt-in `distinct` knob): a fact that straddles a boundary
puts two adjacent chunks near the top of the ranking, and top-k then spends two of its k on one place
whose neighbours are refilled anyway. Taken as places, a chunk that a chosen chunk's neighbours already
bring is passed over, and the coverage rule counts the mass of every chunk the chosen ones refill
(`coverage_places_k`).
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


def coverage_to_k(p: torch.Tensor, coverage: float, k_min: int, k_max: int) -> int:
    """The smallest k whose k most probable chunks hold at least `coverage` of p, clamped to
    [k_min, k_max] and to [1, n_chunks]. Monotone: spreading p's mass over more chunks never lowers k."""
    n = p.numel()
    if n == 0:
        return 0
    cum = p.double().sort(descending=True).values.cumsum(0)
    k = int((cum < coverage * float(cum[-1]) - 1e-12).sum()) + 1  # first index where cum >= coverage
    return int(max(1, min(n, max(k_min, min(k_max, k)))))


def budget_k(kv_budget: float | None, n_chunks: int, neighbors: int) -> int:
    """The most chunks a question may choose when its refilled chunks, neighbours included, may take at
    most `kv_budget` of the document (None: no budget). At least 1: a question always gets its best chunk."""
    if kv_budget is None:
        return n_chunks
    return max(1, min(n_chunks, int(kv_budget * n_chunks + 1e-9) // (2 * neighbors + 1)))


def with_neighbors(chunks: list[int], radius: int, n_chunks: int) -> list[int]:
    out = set()
    for c in chunks:
        out.update(range(max(0, c - radius), min(n_chunks, c + radius + 1)))
    return sorted(out)


def distinct_order(p: torch.Tensor, radius: int, limit: int | None = None) -> list[int]:
    """Chunks in descending p, each passed over when it lies within `radius` of one taken before it (that
    chunk's neighbours refill it): one chunk per place. At most `limit` (None: every place)."""
    taken: list[int] = []
    covered = torch.zeros(p.numel(), dtype=torch.bool)
    for c in p.detach().double().cpu().argsort(descending=True, stable=True).tolist():
        if covered[c]:
            continue
        taken.append(c)
        covered[max(0, c - radius):c + radius + 1] = True
        if limit is not None and len(taken) >= limit:
            break
    return taken


def coverage_places_k(p: torch.Tensor, coverage: float, k_min: int, k_max: int, radius: int) -> int:
    """The fewest places (`distinct_order`) whose chunks, neighbours within `radius` included, hold at least
    `coverage` of p; clamped to [k_min, k_max] and to the number of places."""
    order = distinct_order(p, radius, k_max)
    if not order:
        return 0
    p = p.detach().double().cpu()  # n_chunks values; the mask below lives on the CPU
    total, held = float(p.sum()), torch.zeros(p.numel(), dtype=torch.bool)
    k = len(order)
    for i, c in enumerate(order):
        held[max(0, c - radius):c + radius + 1] = True
        if float(p[held].sum()) >= coverage * total - 1e-12:
            k = i + 1
            break
    return int(max(1, min(len(order), max(k_min, k))))
