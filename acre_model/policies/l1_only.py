"""`l1-only`: the attend set alone, no refill; an ablation (what refill adds)."""
from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan
from .base import PlanContext, Policy


@dataclass
class L1OnlyPolicy(Policy):
    name = "l1-only"

    mode: str = "focus"

    def __post_init__(self) -> None:
        self.check_mode(self.mode)

    def plan(self, ctx: PlanContext) -> Plan:
        return Plan([], use_l1=True, mode=self.mode)
