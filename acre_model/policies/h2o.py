"""`h2o` (H2O): heavy hitters by attention accumulated during the prefill, plus a recent window."""
from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan
from .base import PlanContext
from .token_budget import TokenBudgetPolicy


@dataclass
class H2OPolicy(TokenBudgetPolicy):
    name = "h2o"

    def plan(self, ctx: PlanContext) -> Plan:
        recent = int(self.budget * ctx.doc.n_tokens) // 2  # H2O splits heavy hitters / recent evenly
        return self.keep(ctx, ctx.doc.h2o_scores, recent)
