"""Ingestion: prefill a document once and split its KV into L1 (attend set + locator index) and L2 chunks.

The prefill is exact full attention, chunked so memory stays bounded. While it runs, two cheap
attention statistics are recorded for the query-agnostic baselines: H2O's accumulated attention (from
every `H2O_STRIDE`-th query row) and SnapKV's attention from the document's own last tokens.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .doc_state import LayoutConfig, quantize_int8, to_numpy
from .model import AttnProbe

H2O_STRIDE = 16  # one query row in 16 feeds the H2O statistic (exact H2O would need all T x T probs)
PREFILL_CHUNK = 2048


def document_id(fingerprint: str, layout: LayoutConfig, index_heads: list[tuple[int, int]], dtype: str,
                ids: list[int], stored: list[int] | None = None, n_layers: int = 0) -> str:
    """Content address: model fingerprint, layout parameters, stored layers and token ids.

    The stored layers enter only when they are not every layer (`n_layers`), so a Llama's id is what it
    was before hybrid models, and a hybrid model's global-only and all-layers documents differ."""
    lay = asdict(layout)
    lay.pop("store_layers")
    key = {"fp": fingerprint, "layout": lay, "heads": [list(x) for x in index_heads], "dtype": dtype}
    if stored is not None and list(stored) != list(range(n_layers)):
        key["stored_layers"] = list(stored)
    h = hashlib.sha256()
    h.update(json.dumps(key, sort_keys=True).encode())
    h.update(np.asarray(ids, dtype=np.int32).tobytes())
    return h.hexdigest()[:40]


@dataclass
class Prefilled:
    n_tokens: int
    keys_raw: list[torch.Tensor]  # per layer [Hkv, n, D], pre-RoPE
    keys_rot: list[torch.Tensor]  # per layer [Hkv, n, D], rotated at original positions
    values: list[torch.Tensor]
    h2o: torch.Tensor  # [L, n]
    snapkv: torch.Tensor  # [L, n]
    group_queries: list[torch.Tensor] | None = None  # per layer [Hkv, n, D] fp32: each KV head's query
    # heads summed (rotated), for InfLLM's representative scores; None when the layout stores none


def prefill_document(model, ids: list[int], layout: LayoutConfig,
                     progress: Callable[[int], None] | None = None) -> Prefilled:
    n = len(ids)
    L = model.cfg.num_hidden_layers
    cache = model.new_cache(capacity=n, keep_raw=True)
    x = torch.tensor(ids)
    h2o = torch.zeros(L, n)
    snap = torch.zeros(L, n)
    w = min(layout.snapkv_window, n)
    gq: list[list[torch.Tensor]] | None = [[] for _ in range(L)] if layout.infllm_reps else None
    for s in range(0, n, PREFILL_CHUNK):
        e = min(n, s + PREFILL_CHUNK)
        rows = torch.arange(s, e)
        pick = rows % H2O_STRIDE == 0
        snap_rows = rows >= n - w
        sel = (pick | snap_rows).nonzero().flatten()  # local row indices within this chunk
        probe = AttnProbe(layers=range(L), rows=sel, want_queries=gq is not None,
                          query_rows=slice(None) if gq is not None else None)
        model.forward(x[s:e], cache, torch.arange(s, e), probe=probe)
        if gq is not None:
            for l in range(L):
                q = probe.queries.pop(l)  # [Hq, e - s, D]
                gq[l].append(q.reshape(model.cfg.num_key_value_heads, -1, *q.shape[1:]).sum(1))
        is_h2o, is_snap = pick[sel], snap_rows[sel]
        for l in range(L):
            p = probe.probs[l]  # [Hq, R, e] over keys 0..e-1
            if is_h2o.any():
                h2o[l, :e] += p[:, is_h2o].sum((0, 1)).cpu()
            if is_snap.any():
                snap[l, :e] += p[:, is_snap].sum((0, 1)).cpu()
        if progress is not None:
            progress(e - s)
    # SnapKV smooths its scores with a small pooling window so neighbours of a hit survive together.
    snap = torch.nn.functional.max_pool1d(snap[:, None], 7, stride=1, padding=3)[:, 0]
    return Prefilled(
        n, [cache.raw_keys(l) for l in range(L)], [cache.view(l)[0] for l in range(L)],
        [cache.view(l)[1] for l in range(L)], h2o, snap,
        None if gq is None else [torch.cat(g, 1) for g in gq])


def select_l1(pf: Prefilled, layout: LayoutConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [n_l1] sorted, always [n_l1] bool) of the attend set: sinks, recent, representatives."""
    n, C = pf.n_tokens, layout.chunk_size
    always = torch.zeros(n, dtype=torch.bool)
    always[: layout.n_sink] = True
    if layout.n_recent:
        always[max(0, n - layout.n_recent):] = True
    chosen = always.clone()
    r = layout.reps_per_chunk
    if r:
        score = pf.h2o.sum(0)
        for c in range(0, n, C):
            e = min(n, c + C)
            k = min(r, e - c)
            if layout.rep_mode == "uniform":
                local = ((torch.arange(k) + 0.5) * (e - c) / k).long()
            else:
                local = score[c:e].topk(k).indices
            chosen[c + local] = True
    idx = chosen.nonzero().flatten()
    return idx, always[idx]


def window_positions(n_tokens: int, window: int, n_sink: int) -> torch.Tensor:
    """[n_win] ascending: the first `n_sink` and the last `window` positions of the document (once each)."""
    keep = torch.zeros(n_tokens, dtype=torch.bool)
    keep[:n_sink] = True
    keep[max(0, n_tokens - window):] = True
    return keep.nonzero().flatten()


def build_l1_parts(pf: Prefilled, layout: LayoutConfig, index_heads: list[tuple[int, int]],
                   stored: list[int] | None = None, window: int = 0) -> dict[str, np.ndarray]:
    """The L1 parts of the stored layers (`stored`, model order; None: every layer). The layers left out
    (a hybrid model's local layers) get their window entries instead: the last `window` tokens and the
    layout's sinks (`win_keys`, `win_values`, `win_pos`)."""
    idx, always = select_l1(pf, layout)
    L = len(pf.keys_raw)
    stored = list(range(L)) if stored is None else list(stored)
    parts = {
        "l1_keys": to_numpy(torch.stack([pf.keys_raw[l][:, idx] for l in stored])),
        "l1_values": to_numpy(torch.stack([pf.values[l][:, idx] for l in stored])),
        "l1_pos": idx.numpy().astype(np.int32),
        "l1_chunk": (idx // layout.chunk_size).numpy().astype(np.int32),
        "l1_always": always.numpy().astype(np.uint8),
        "h2o_scores": pf.h2o.numpy().astype(np.float32),
        "snapkv_scores": pf.snapkv.numpy().astype(np.float32),
    }
    local = [l for l in range(L) if l not in stored]
    if local:
        w = window_positions(pf.n_tokens, window, layout.n_sink)
        parts["win_keys"] = to_numpy(torch.stack([pf.keys_raw[l][:, w] for l in local]))
        parts["win_values"] = to_numpy(torch.stack([pf.values[l][:, w] for l in local]))
        parts["win_pos"] = w.numpy().astype(np.int32)
    sub = pf if not local else Prefilled(
        pf.n_tokens, [pf.keys_raw[l] for l in stored], [pf.keys_rot[l] for l in stored],
        [pf.values[l] for l in stored], pf.h2o, pf.snapkv,
        None if pf.group_queries is None else [pf.group_queries[l] for l in stored])
    if layout.quest_page:
        parts["quest_kmin"], parts["quest_kmax"] = quest_bounds(sub, layout.chunk_size, layout.quest_page)
    if layout.infllm_reps and pf.group_queries is not None:
        parts["infllm_keys"], parts["infllm_pos"] = infllm_representatives(sub, layout.chunk_size, layout.infllm_reps)
    if index_heads:
        keys = torch.stack([pf.keys_rot[l][g].float().cpu() for l, g in index_heads])  # [H_idx, n, D]
        if layout.index_int8:
            q, scale = quantize_int8(keys)
            parts["index_keys"] = q.numpy()
            parts["index_scale"] = scale.numpy().astype(np.float32)
        else:
            parts["index_keys"] = keys.to(torch.float16).numpy()
    return parts


def page_index(n_tokens: int, chunk_size: int, page: int) -> torch.Tensor:
    """[n_tokens] the Quest page of each token: pages of `page` tokens inside each chunk (a page never
    straddles two chunks; the last page of a chunk may be shorter). Chunk c holds pages
    c*ceil(C/page) .. (c+1)*ceil(C/page) - 1."""
    t = torch.arange(n_tokens)
    return (t // chunk_size) * -(-chunk_size // page) + (t % chunk_size) // page


def quest_bounds(pf: Prefilled, chunk_size: int, page: int) -> tuple[np.ndarray, np.ndarray]:
    """Quest's page metadata: elementwise min and max of the rotated keys of each page, per layer and KV
    head, [L, Hkv, n_pages, D] float16 each. The float16 values are rounded outwards (min down, max up),
    so they still bound every key of the page."""
    idx = page_index(pf.n_tokens, chunk_size, page)
    n_pages = int(idx[-1]) + 1
    lo, hi = [], []
    for k in pf.keys_rot:
        k = k.float().cpu()  # [Hkv, n, D]
        at = idx.view(1, -1, 1).expand_as(k)
        empty = k.new_empty(k.shape[0], n_pages, k.shape[2])
        lo.append(empty.scatter_reduce(1, at, k, "amin", include_self=False))
        hi.append(empty.clone().scatter_reduce(1, at, k, "amax", include_self=False))
    lo32, hi32 = torch.stack(lo), torch.stack(hi)
    lo16, hi16 = lo32.half(), hi32.half()
    inf = torch.tensor(float("inf"), dtype=torch.float16)
    lo16 = torch.where(lo16.float() > lo32, torch.nextafter(lo16, -inf), lo16)
    hi16 = torch.where(hi16.float() < hi32, torch.nextafter(hi16, inf), hi16)
    return lo16.numpy(), hi16.numpy()


def infllm_representatives(pf: Prefilled, chunk_size: int, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """InfLLM's representative tokens: per layer and KV head, the `reps` tokens of each chunk with the
    highest representative score r_m = mean over the next `chunk_size` tokens j of q_j . k_m (the
    attention logit the token receives from the window that follows it, the query heads of the KV head
    summed). Returns (keys [L, Hkv, n_chunks, reps, D] float16 rotated, positions [L, Hkv, n_chunks, reps]
    int32)."""
    n, C, W = pf.n_tokens, chunk_size, chunk_size
    n_chunks = -(-n // C)
    t = torch.arange(n)
    last = (t + W).clamp(max=n - 1)  # the window of token m is (m, last[m]]
    count = (last - t).clamp(min=1).float()
    keys, poss = [], []
    for k, qg in zip(pf.keys_rot, pf.group_queries):
        k, qg = k.float().cpu(), qg.float().cpu()  # [Hkv, n, D]
        cs = torch.cat([qg.new_zeros(qg.shape[0], 1, qg.shape[2]), qg.cumsum(1)], 1)  # cs[:, i] = sum_{j<i}
        window = cs[:, last + 1] - cs[:, t + 1]  # [Hkv, n, D]: sum of the queries in (m, last[m]]
        score = (k * window).sum(-1) / count  # [Hkv, n]
        score[:, last == t] = float("-inf")  # the document's last token has no window: never preferred
        pad = n_chunks * C - n
        score = torch.cat([score, score.new_full((score.shape[0], pad), float("-inf"))], 1) if pad else score
        local = score.view(-1, n_chunks, C).topk(reps, -1).indices  # [Hkv, n_chunks, reps]
        pos = (torch.arange(n_chunks)[:, None] * C + local).clamp(max=n - 1)  # a short last chunk repeats
        keys.append(torch.gather(k, 1, pos.reshape(k.shape[0], -1, 1).expand(-1, -1, k.shape[2]))
                    .view(*pos.shape, k.shape[2]))
        poss.append(pos)
    return torch.stack(keys).half().numpy(), torch.stack(poss).numpy().astype(np.int32)


def iter_chunks(pf: Prefilled, chunk_size: int, stored: list[int] | None = None) -> Iterator[np.ndarray]:
    """L2 chunks in order, each [n_stored_layers, 2, n_kv_heads, len_c, head_dim] with pre-RoPE keys
    (`stored`: the model layers kept, in order; None: every layer)."""
    stored = list(range(len(pf.keys_raw))) if stored is None else list(stored)
    for s in range(0, pf.n_tokens, chunk_size):
        e = min(pf.n_tokens, s + chunk_size)
        yield to_numpy(torch.stack([torch.stack([pf.keys_raw[l][:, s:e], pf.values[l][:, s:e]])
                                    for l in stored]))
