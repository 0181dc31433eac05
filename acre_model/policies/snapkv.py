"""`snapkv` (SnapKV): tokens the document's own last window attends to (query-agnostic)."""
from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan
from .base import PlanContext
from .token_budget import TokenBudgetPolicy


@dataclass
class SnapKVPolicy(TokenBudgetPolicy):
    name = "snapkv"

    def plan(self, ctx: PlanContext) -> Plan:
        return self.keep(ctx, ctx.doc.snapkv_scores, ctx.doc.layout.snapkv_window)
