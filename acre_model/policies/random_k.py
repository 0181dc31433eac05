"""`random`: as many chunks as `acre` would refill, chosen at random (seeded); an ablation."""
from __future__ import annotations

import torch

from .. import locator as loc
from .base import AskContext, Plan, Policy, register


@register
class RandomPolicy(Policy):
    name = "random"

    def plan(self, ctx: AskContext) -> Plan:
        p = ctx.index_p()
        prm = ctx.params
        h = loc.normalized_entropy(p)
        k = loc.entropy_to_k(h, prm.k_min, prm.k_max, p.numel())
        g = torch.Generator().manual_seed(prm.seed)
        top = torch.randperm(p.numel(), generator=g)[:k].tolist()
        chunks = loc.with_neighbors(top, prm.neighbors, p.numel())
        return Plan(chunks, use_l1=True, mode=prm.mode, entropy=h, k=k, p=p)
