"""`acre`: the locator index picks chunks, entropy sets how many, neighbours come along."""
from __future__ import annotations

from .base import AskContext, Plan, Policy, register


@register
class AcrePolicy(Policy):
    name = "acre"

    def plan(self, ctx: AskContext) -> Plan:
        return self.entropy_plan(ctx, ctx.index_p())
