"""`full`: every chunk at its original position: exactly full attention over the document."""
from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan
from .base import PlanContext, Policy


@dataclass
class FullPolicy(Policy):
    name = "full"

    def plan(self, ctx: PlanContext) -> Plan:
        return Plan(list(range(ctx.doc.n_chunks)), use_l1=False, mode="exact")
