"""`acre-l1`: the seed's locator (attention mass on the sparse attend set); an ablation."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import locator
from ..pass1 import run_pass1
from .base import PlanContext
from .chunk_policy import CoverageVolumePolicy


@dataclass
class AcreL1Policy(CoverageVolumePolicy):
    name = "acre-l1"

    l1_layers: tuple[int, ...] | None = None  # layers whose attention is summed (None: the middle 40%)

    def locate(self, ctx: PlanContext) -> torch.Tensor:
        """p from pass 1's attention probabilities on the attend set, summed per chunk."""
        if self.l1_layers is not None:
            layers = list(self.l1_layers)
        else:
            L = ctx.cfg.num_hidden_layers
            layers = list(range(int(L * 0.4), int(L * 0.8)))
            # a hybrid document's local layers attend their window, not the attend set: global ones only
            layers = [l for l in layers if ctx.doc.is_stored(l)] or [l for l in range(L) if ctx.doc.is_stored(l)]
        probe = run_pass1(ctx.model, ctx.doc, ctx.q_ids, layers, want_queries=False, want_probs=True,
                          runner=ctx.pass1)
        return locator.to_distribution(locator.l1_chunk_scores(ctx.doc, probe), self.p_power)
