"""`l1-only`: the attend set alone, no refill; an ablation (what refill adds)."""
from __future__ import annotations

from .base import AskContext, Plan, Policy, register


@register
class L1OnlyPolicy(Policy):
    name = "l1-only"

    def plan(self, ctx: AskContext) -> Plan:
        return Plan([], use_l1=True, mode=ctx.params.mode)
