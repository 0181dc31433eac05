"""`full`: every chunk at its original position: exactly full attention over the document."""
from __future__ import annotations

from .base import AskContext, Plan, Policy, register


@register
class FullPolicy(Policy):
    name = "full"

    def plan(self, ctx: AskContext) -> Plan:
        return Plan(list(range(ctx.doc.n_chunks)), use_l1=False, mode="exact")
