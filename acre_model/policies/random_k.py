"""`random`: as many chunks as `acre` would refill (the same locator and volume rule), chosen at
random (seeded); an ablation that shows what the locator's choice is worth."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .base import PlanContext
from .chunk_policy import CoverageVolumePolicy


@dataclass
class RandomPolicy(CoverageVolumePolicy):
    name = "random"

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(not self.distinct, "random chooses its chunks at random: distinct places do not apply")

    def choose(self, ctx: PlanContext, p: torch.Tensor, k: int) -> list[int]:
        # Seeded per (document, question, seed): reproducible, yet not the same chunks for every
        # document of the same size.
        key = f"{ctx.doc.doc_id}:{ctx.q_ids.tolist()}:{self.seed}".encode()
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
        return torch.randperm(p.numel(), generator=g)[:k].tolist()
