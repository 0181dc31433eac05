"""KV policies: one small class each, all planned and run by the same engine."""
from .base import AskContext, AskParams, Plan, Policy, get_policy, policy_names

__all__ = ["AskContext", "AskParams", "Plan", "Policy", "get_policy", "policy_names"]
