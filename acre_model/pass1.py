"""Pass 1: the question over the document's L1 attend set, before any refill.

The question's tokens run at their original positions (continuing after the document) over the attend
set only. An `AttnProbe` records what the locators need at chosen layers: the question's queries (for
the locator index) and/or its attention probabilities over the attend set (for the seed's L1 locator).
"""
from __future__ import annotations

import torch

from .doc_state import DocState
from .kv_cache import KVCache
from .model import AttnProbe


def run_pass1(model, doc: DocState, q_ids: torch.Tensor, probe_layers: list[int], want_queries: bool,
              want_probs: bool) -> AttnProbe:
    """Runs q_ids [T] over the attend set; returns the probe filled at `probe_layers`:
    `queries[l]` [n_heads, T, head_dim] (rotated) and/or `probs[l]` [n_heads, T, n_l1 + T]."""
    # Only the layers up to the last probed one run: nothing later changes what the probe records.
    L = max(probe_layers) + 1
    # per layer the attend set; a hybrid document's unstored local layers see their window instead
    entries = [doc.pass1_entries(l) for l in range(L)]
    cache = KVCache.from_entries(model.ropes, [e[0] for e in entries], [e[1] for e in entries],
                                 [e[2] for e in entries], extra_capacity=len(q_ids))
    probe = AttnProbe(layers=probe_layers, want_probs=want_probs, want_queries=want_queries)
    pos = torch.arange(doc.n_tokens, doc.n_tokens + len(q_ids))
    model.forward(q_ids, cache, pos, probe=probe, last_layer=L - 1)
    return probe
