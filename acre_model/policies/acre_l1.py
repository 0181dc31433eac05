"""`acre-l1`: the seed's locator (attention mass on the sparse attend set); an ablation."""
from __future__ import annotations

from .base import AskContext, Plan, Policy, register


@register
class AcreL1Policy(Policy):
    name = "acre-l1"

    def plan(self, ctx: AskContext) -> Plan:
        return self.entropy_plan(ctx, ctx.l1_p())
