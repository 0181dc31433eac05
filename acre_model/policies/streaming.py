"""`streaming` (StreamingLLM): attention sinks + the most recent tokens, up to the budget."""
from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan
from .base import PlanContext
from .token_budget import TokenBudgetPolicy


@dataclass
class StreamingPolicy(TokenBudgetPolicy):
    name = "streaming"

    def plan(self, ctx: PlanContext) -> Plan:
        return self.keep(ctx, None, ctx.doc.n_tokens)
