"""`fixed-k`: the locator index's top `fixed_k` chunks, no entropy rule; an ablation."""
from __future__ import annotations

from .base import AskContext, Plan, Policy, register


@register
class FixedKPolicy(Policy):
    name = "fixed-k"

    def plan(self, ctx: AskContext) -> Plan:
        return self.entropy_plan(ctx, ctx.index_p(), k=ctx.params.fixed_k)
