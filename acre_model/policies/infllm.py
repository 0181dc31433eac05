"""`infllm` (a peer): chunks ranked by the question's attention logits on their representative tokens.

After *InfLLM: Training-Free Long-Context Extrapolation for LLMs with an Efficient Context Memory* (Xiao,
Zhang, Han, Xiao, Lin, Zhang, Liu, Sun; 2024). InfLLM splits the evicted context into blocks of 128 tokens
and keeps 4 representative tokens each: those whose keys get the largest mean logit q.k from the queries
of the tokens that follow them (their local window). Scaled to our 32-token chunks: one representative per
chunk (`LayoutConfig.infllm_reps`), scored at ingestion with the window of the next 32 tokens, per layer
and KV head (`ingest.infllm_representatives`). A block's relevance to the current tokens is the sum of q.k
over those tokens' queries, the heads and the representatives; InfLLM loads the top blocks of each layer
independently. ACRE refills one set of whole chunks at every layer, so the nearest single set is the
union's ranking: each layer's relevance (as a mean logit / sqrt(D)) becomes shares over the chunks
(softmax), a chunk scores its largest share over the layers, and the top `fixed_k` chunks are refilled with
their neighbours, as `fixed-k` does: same harness, same KV.
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


def relevance(q: torch.Tensor, rep_keys: torch.Tensor) -> torch.Tensor:
    """InfLLM's block relevance at one layer: q [Hq, T, D], representative keys [Hkv, n_chunks, r, D] ->
    [n_chunks] the mean over query heads, question tokens and representatives of q.k (the paper's sum,
    divided by the number of terms)."""
    hkv, d = rep_keys.shape[0], rep_keys.shape[-1]
    qg = q.reshape(hkv, -1, d).mean(1)  # [Hkv, D]: a KV head's query heads and the tokens, averaged
    return torch.einsum("gd,gcrd->c", qg, rep_keys.float()) / (hkv * rep_keys.shape[2])


@dataclass
class InfLLMPolicy(FixedKPolicy):
    name = "infllm"

    def locate(self, ctx: PlanContext) -> torch.Tensor:
        doc, cfg = ctx.doc, ctx.cfg
        if doc.infllm_keys is None:
            raise DocumentError(
                f"document {doc.doc_id[:12]} has no InfLLM representatives (ingested before they were stored, "
                f"or with infllm_reps=0): ingest its text again to ask it with policy 'infllm' (it gets a new id)")
        layers = [l for l in range(cfg.num_hidden_layers) if doc.is_stored(l)]  # hybrid: global layers
        probe = run_pass1(ctx.model, doc, ctx.q_ids, layers, want_queries=True, want_probs=False,
                          runner=ctx.pass1)
        skip = locator.attended_anyway(doc)
        share = torch.zeros(doc.n_chunks, device=doc.infllm_keys.device)
        for layer in layers:
            rel = relevance(probe.queries[layer].to(share.device), doc.infllm_keys[doc.slot(layer)])
            share = torch.maximum(share, locator.softmax_mass(rel / math.sqrt(cfg.head_dim), skip))
        return locator.to_distribution(share, self.p_power)
