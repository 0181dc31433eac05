"""Pass 1 and the locators: which L2 chunks does a question need?

Pass 1 runs the question over the L1 attend set (at the document's original positions, the question
continuing after the document). A locator turns what pass 1 saw into a distribution `p` over chunks:

- `index` (default): the question's queries at the calibrated retrieval heads against the keys of
  *every* document token at those heads (the locator index). Each chunk scores the largest attention
  probability that any (head, question token) puts on one of its tokens (the max rule: a needle is one
  sharp peak; summing dilutes it among many weak matches).
- `l1` (the seed's locator, kept as an ablation): attention mass of the question on the attend set,
  summed per chunk through the proxy map, at the middle layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .doc_state import DocState
from .kv_cache import KVCache
from .model import AttnProbe


@dataclass
class Pass1:
    probe: AttnProbe
    n_l1: int


def run_pass1(model, doc: DocState, q_ids: torch.Tensor, probe_layers: list[int], want_queries: bool,
              want_probs: bool) -> Pass1:
    """The question over the attend set; records queries/probabilities at `probe_layers`."""
    L = doc.l1_keys.shape[0]
    cache = KVCache.from_entries(model.rope, [doc.l1_keys[l] for l in range(L)],
                                 [doc.l1_values[l] for l in range(L)], doc.l1_pos,
                                 extra_capacity=len(q_ids))
    probe = AttnProbe(layers=probe_layers, want_probs=want_probs, want_queries=want_queries)
    pos = torch.arange(doc.n_tokens, doc.n_tokens + len(q_ids))
    model.forward(q_ids, cache, pos, probe=probe)
    return Pass1(probe, doc.n_l1)


def _max_per_chunk(x: torch.Tensor, n_tokens: int, chunk_size: int) -> torch.Tensor:
    """x [n_tokens] -> [n_chunks] max over each chunk's tokens."""
    n_chunks = -(-n_tokens // chunk_size)
    pad = n_chunks * chunk_size - n_tokens
    if pad:
        x = torch.cat([x, x.new_full((pad,), float("-inf"))])
    return x.view(n_chunks, chunk_size).amax(-1)


def index_chunk_scores(doc: DocState, p1: Pass1, n_rep: int, head_dim: int) -> torch.Tensor:
    """Max-rule chunk scores [n_chunks] from the locator index."""
    if doc.index_keys is None or not doc.index_heads:
        raise ValueError("this document has no locator index (ingested without calibration)")
    best = torch.zeros(doc.n_tokens, device=doc.index_keys.device)
    for h, (layer, g) in enumerate(doc.index_heads):
        q = p1.probe.queries[layer][g * n_rep:(g + 1) * n_rep]  # [n_rep, T, D] rotated
        logits = q.reshape(-1, head_dim) @ doc.index_keys[h].T / math.sqrt(head_dim)  # [n_rep*T, n]
        best = torch.maximum(best, logits.softmax(-1).amax(0))
    # Sinks and the recent window are always attended: a chunk earns refill only by its other tokens
    # (attention sinks would otherwise win every ranking).
    best[doc.l1_pos[doc.l1_always]] = 0.0
    return _max_per_chunk(best, doc.n_tokens, doc.chunk_size)


def l1_chunk_scores(doc: DocState, p1: Pass1) -> torch.Tensor:
    """Seed rule: attention mass on attend-set entries, summed per chunk (sinks and recent excluded)."""
    mass = torch.zeros(doc.n_l1, device=doc.l1_pos.device)
    for p in p1.probe.probs.values():
        mass += p[..., : doc.n_l1].sum((0, 1)).to(mass.device)  # over heads and question tokens
    mass = mass.masked_fill(doc.l1_always, 0.0)
    scores = torch.zeros(doc.n_chunks, device=mass.device)
    scores.index_add_(0, doc.l1_chunk, mass)
    return scores


def to_distribution(scores: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Chunk scores -> distribution p ∝ score**power (power > 1 sharpens: a lone peak over a flat
    background of weak matches then has low entropy, spread attention keeps a high one)."""
    s = scores.clamp_min(0).double() ** power
    total = s.sum()
    if total <= 0:
        return torch.full_like(s, 1.0 / s.numel())
    return s / total


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
