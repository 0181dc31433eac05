"""Token-level, query-agnostic baselines at a KV budget: `streaming`, `h2o`, `snapkv`.

Each keeps sinks + a recent window and fills the rest of `budget * n_tokens` per layer by its own score.
"""
from __future__ import annotations

import torch

from .base import AskContext, Plan, Policy, register


def _keep(ctx: AskContext, scores: torch.Tensor | None, n_sink: int, recent: int) -> torch.Tensor:
    """[L, n] bool: sinks, the last `recent` tokens, then the best-scored tokens up to the budget."""
    doc = ctx.doc
    n, L = doc.n_tokens, ctx.cfg.num_hidden_layers
    budget = max(1, int(round(ctx.params.budget * n)))
    keep = torch.zeros(L, n, dtype=torch.bool)
    keep[:, : min(n_sink, budget)] = True
    r = max(0, min(recent, budget - int(keep[0].sum())))
    if r:
        keep[:, n - r:] = True
    left = budget - int(keep[0].sum())
    if scores is not None and left > 0:
        s = scores.detach().float().cpu().masked_fill(keep, float("-inf"))
        idx = s.topk(min(left, n), dim=-1).indices
        keep.scatter_(1, idx, True)
    return keep


@register
class StreamingPolicy(Policy):
    """StreamingLLM: attention sinks + the most recent tokens."""

    name = "streaming"

    def plan(self, ctx: AskContext) -> Plan:
        n_sink = int(ctx.doc.extra.get("layout", {}).get("n_sink", 4))
        return Plan([], use_l1=False, tokens=_keep(ctx, None, n_sink, ctx.doc.n_tokens), mode="exact")


@register
class H2OPolicy(Policy):
    """H2O: heavy hitters by attention accumulated during the prefill."""

    name = "h2o"

    def plan(self, ctx: AskContext) -> Plan:
        n_sink = int(ctx.doc.extra.get("layout", {}).get("n_sink", 4))
        recent = int(ctx.params.budget * ctx.doc.n_tokens) // 2  # H2O splits heavy hitters / recent evenly
        return Plan([], use_l1=False, tokens=_keep(ctx, ctx.doc.h2o_scores, n_sink, recent), mode="exact")


@register
class SnapKVPolicy(Policy):
    """SnapKV: tokens the document's own last window attends to (query-agnostic)."""

    name = "snapkv"

    def plan(self, ctx: AskContext) -> Plan:
        n_sink = int(ctx.doc.extra.get("layout", {}).get("n_sink", 4))
        window = int(ctx.doc.extra.get("layout", {}).get("snapkv_window", 32))
        return Plan([], use_l1=False, tokens=_keep(ctx, ctx.doc.snapkv_scores, n_sink, window), mode="exact")
