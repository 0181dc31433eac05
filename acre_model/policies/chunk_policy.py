"""The shape every chunk-level policy shares: locate (pass 1 + a locator) -> volume -> select.

`ChunkPolicy.plan` reads as the method's steps. Subclasses change one step each: `acre-l1` its
locator, `fixed-k` and the entropy policies their volume, `random` its choice of chunks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import locator, volume
from ..pass1 import run_pass1
from ..plan import Plan
from .base import PlanContext, Policy


@dataclass
class ChunkPolicy(Policy):
    """Refill whole L2 chunks picked from a locator's distribution; keep L1 for the rest."""

    neighbors: int = 1  # each chosen chunk brings this many neighbours on each side
    mode: str = "focus"  # "exact" (original positions) | "focus" (renumbered contiguously)
    p_power: float = 2.0  # p ∝ score**p_power: sharpens p so its entropy separates one peak from spread

    def __post_init__(self) -> None:
        self.check(isinstance(self.neighbors, int) and self.neighbors >= 0, "neighbors must be an integer >= 0")
        self.check_mode(self.mode)
        self.check(self.p_power > 0, "p_power must be > 0")

    def plan(self, ctx: PlanContext) -> Plan:
        p = self.locate(ctx)  # pass 1 + the locator: a distribution over chunks
        k = self.volume(p)  # how many chunks this question gets
        top = self.choose(ctx, p, k)
        chunks = volume.with_neighbors(top, self.neighbors, p.numel())
        return Plan(chunks, use_l1=True, mode=self.mode, entropy=volume.normalized_entropy(p), k=k, p=p)

    def locate(self, ctx: PlanContext) -> torch.Tensor:
        """p [n_chunks] from the locator index: pass 1 records the question's queries at the retrieval
        heads' layers; every document token's key at those heads is scored against them."""
        doc, cfg = ctx.doc, ctx.cfg
        layers = sorted({layer for layer, _ in doc.index_heads})
        probe = run_pass1(ctx.model, doc, ctx.q_ids, layers, want_queries=True, want_probs=False)
        scores = locator.index_chunk_scores(doc, probe, cfg.n_rep, cfg.head_dim)
        return locator.to_distribution(scores, self.p_power)

    def volume(self, p: torch.Tensor) -> int:
        raise NotImplementedError

    def choose(self, ctx: PlanContext, p: torch.Tensor, k: int) -> list[int]:
        """The k most probable chunks."""
        return p.topk(min(k, p.numel())).indices.tolist()


@dataclass
class EntropyVolumePolicy(ChunkPolicy):
    """k from the entropy of p: `k_min + (k_max - k_min) * H(p) / log(n_chunks)` (`volume.py`)."""

    k_min: int = 1
    k_max: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(isinstance(self.k_min, int) and isinstance(self.k_max, int) and 1 <= self.k_min <= self.k_max,
                   f"need integers 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")

    def volume(self, p: torch.Tensor) -> int:
        return volume.entropy_to_k(volume.normalized_entropy(p), self.k_min, self.k_max, p.numel())
