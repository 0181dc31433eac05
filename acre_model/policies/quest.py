"""`quest` (a peer): chunks ranked by Quest's upper bound of the question's attention logits.

After *Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference* (Tang, Zhao, Zhu, Xiao,
Kasikci, Han; ICML 2024). At ingestion each page of `LayoutConfig.quest_page` tokens (the paper's 16;
two pages per 32-token chunk) stores the elementwise min `m` and max `M` of its rotated keys, per layer
and KV head (`ingest.quest_bounds`). For a query q, `sum_d max(q_d m_d, q_d M_d)` bounds q.k for every
key of the page from above (`upper_bound`). Quest picks the top pages of each head independently, at each
decoding step with that step's query. ACRE refills one set of whole chunks at every layer for the whole
answer, so the nearest single set is the union's ranking: every (layer, query head, question token) at the
layers from the third on (Quest keeps the first two layers dense) turns its page bounds into shares
(softmax of bound / sqrt(D) over the pages), a page scores its largest share over them (a page one head
needs is loaded for that head), a chunk scores its best page, and the top `fixed_k` chunks are refilled
with their neighbours, as `fixed-k` does: same harness, same KV.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import locator
from ..errors import DocumentError
from ..pass1 import run_pass1
from .base import PlanContext
from .fixed_k import FixedKPolicy

DENSE_LAYERS = 2  # Quest leaves the first two layers dense: their bounds do not rank pages


def upper_bound(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Quest's criticality: q [Hq, T, D], page bounds [Hkv, P, D] -> [Hq, T, P], the largest q.k any key
    within the bounds can reach (sum over d of max(q_d * min_d, q_d * max_d))."""
    kmin = kmin.float().repeat_interleave(n_rep, 0)
    kmax = kmax.float().repeat_interleave(n_rep, 0)
    return q.clamp(min=0) @ kmax.transpose(1, 2) + q.clamp(max=0) @ kmin.transpose(1, 2)


@dataclass
class QuestPolicy(FixedKPolicy):
    name = "quest"

    def locate(self, ctx: PlanContext) -> torch.Tensor:
        doc, cfg = ctx.doc, ctx.cfg
        if doc.quest_kmin is None or doc.quest_kmax is None:
            raise DocumentError(
                f"document {doc.doc_id[:12]} has no Quest key bounds (ingested before they were stored, or "
                f"with quest_page=0): ingest its text again to ask it with policy 'quest' (it gets a new id)")
        L = cfg.num_hidden_layers
        layers = [l for l in range(min(DENSE_LAYERS, L - 1), L) if doc.is_stored(l)]  # hybrid: global layers
        probe = run_pass1(ctx.model, doc, ctx.q_ids, layers, want_queries=True, want_probs=False,
                          runner=ctx.pass1)
        page = doc.layout.quest_page
        per_chunk = -(-doc.chunk_size // page)
        n_pages = doc.quest_kmin.shape[2]
        skip = locator.attended_anyway(doc).repeat_interleave(per_chunk)[:n_pages]
        share = torch.zeros(n_pages, device=doc.quest_kmin.device)
        for layer in layers:
            ub = upper_bound(probe.queries[layer].to(share.device), doc.quest_kmin[doc.slot(layer)],
                             doc.quest_kmax[doc.slot(layer)],
                             cfg.n_rep)
            share = torch.maximum(share, locator.softmax_mass(ub / math.sqrt(cfg.head_dim), skip).amax((0, 1)))
        pad = doc.n_chunks * per_chunk - n_pages  # the short last chunk has fewer pages
        if pad:
            share = torch.cat([share, share.new_zeros(pad)])
        return locator.to_distribution(share.view(doc.n_chunks, per_chunk).amax(-1), self.p_power)
