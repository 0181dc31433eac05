"""KV policies: one small dataclass each, all planned and run by the same engine.

`POLICIES` is the explicit list; `make_policy(name, **knobs)` builds one and checks its knobs.
"""
from __future__ import annotations

from ..errors import InputError
from .acre import AcreEntropyPolicy, AcrePolicy
from .acre_l1 import AcreL1Policy
from .base import PlanContext, Policy
from .fixed_k import FixedKPolicy
from .full import FullPolicy
from .h2o import H2OPolicy
from .infllm import InfLLMPolicy
from .l1_only import L1OnlyPolicy
from .quest import QuestPolicy
from .random_k import RandomPolicy
from .snapkv import SnapKVPolicy
from .streaming import StreamingPolicy

POLICIES: tuple[type[Policy], ...] = (AcrePolicy, AcreEntropyPolicy, AcreL1Policy, FixedKPolicy, FullPolicy,
                                      L1OnlyPolicy, RandomPolicy, StreamingPolicy, H2OPolicy, SnapKVPolicy,
                                      QuestPolicy, InfLLMPolicy)
_BY_NAME = {p.name: p for p in POLICIES}


def policy_names() -> list[str]:
    return list(_BY_NAME)


def policy_class(name: str) -> type[Policy]:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise InputError(f"unknown policy {name!r}; choose one of {', '.join(_BY_NAME)}") from None


def make_policy(name: str, **knobs) -> Policy:
    """The policy called `name` with these knobs (the others at their defaults)."""
    return policy_class(name).from_knobs(**knobs)


__all__ = ["POLICIES", "PlanContext", "Policy", "make_policy", "policy_class", "policy_names", "AcrePolicy",
           "AcreEntropyPolicy", "AcreL1Policy", "FixedKPolicy", "FullPolicy", "L1OnlyPolicy", "RandomPolicy",
           "StreamingPolicy", "H2OPolicy", "SnapKVPolicy", "QuestPolicy", "InfLLMPolicy"]
