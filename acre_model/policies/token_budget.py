"""What the token-level, query-agnostic baselines share: a KV budget and the selection under it.

Each baseline (`streaming`, `h2o`, `snapkv`) keeps the document's sinks and a recent window and fills
the rest of `budget * n_tokens` entries per layer by its own score; it names tokens, not chunks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..plan import Plan
from .base import PlanContext, Policy


@dataclass
class TokenBudgetPolicy(Policy):
    budget: float = 0.15  # target KV ratio

    def __post_init__(self) -> None:
        self.check(0 < self.budget <= 1, f"budget (KV ratio) must be in (0, 1], got {self.budget}")

    def keep(self, ctx: PlanContext, scores: torch.Tensor | None, recent: int) -> Plan:
        """A plan of [L, n] tokens: the layout's sinks, the last `recent` tokens, then the best-scored
        tokens (scores [L, n]) up to the budget, at original positions."""
        doc = ctx.doc
        n, L = doc.n_tokens, ctx.cfg.num_hidden_layers
        budget = max(1, int(round(self.budget * n)))
        keep = torch.zeros(L, n, dtype=torch.bool)
        keep[:, : min(doc.layout.n_sink, budget)] = True
        r = max(0, min(recent, budget - int(keep[0].sum())))
        if r:
            keep[:, n - r:] = True
        left = budget - int(keep[0].sum())
        if scores is not None and left > 0:
            s = scores.detach().float().cpu().masked_fill(keep, float("-inf"))
            idx = s.topk(min(left, n), dim=-1).indices
            keep.scatter_(1, idx, True)
        return Plan([], use_l1=False, tokens=keep, mode="exact")
