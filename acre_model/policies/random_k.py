"""`random`: as many chunks as `acre` would refill, chosen at random (seeded); an ablation."""
from __future__ import annotations

import hashlib

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
        # Seeded per (document, question, seed): reproducible, yet not the same chunks for every
        # document of the same size.
        key = f"{ctx.doc.doc_id}:{ctx.q_ids.tolist()}:{prm.seed}".encode()
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
        top = torch.randperm(p.numel(), generator=g)[:k].tolist()
        chunks = loc.with_neighbors(top, prm.neighbors, p.numel())
        return Plan(chunks, use_l1=True, mode=prm.mode, entropy=h, k=k, p=p)
