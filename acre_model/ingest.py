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
                ids: list[int]) -> str:
    """Content address: model fingerprint, layout parameters and token ids."""
    h = hashlib.sha256()
    h.update(json.dumps({"fp": fingerprint, "layout": asdict(layout), "heads": [list(x) for x in index_heads],
                         "dtype": dtype}, sort_keys=True).encode())
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


def prefill_document(model, ids: list[int], layout: LayoutConfig,
                     progress: Callable[[int], None] | None = None) -> Prefilled:
    n = len(ids)
    L = model.cfg.num_hidden_layers
    cache = model.new_cache(capacity=n, keep_raw=True)
    x = torch.tensor(ids)
    h2o = torch.zeros(L, n)
    snap = torch.zeros(L, n)
    w = min(layout.snapkv_window, n)
    for s in range(0, n, PREFILL_CHUNK):
        e = min(n, s + PREFILL_CHUNK)
        rows = torch.arange(s, e)
        pick = rows % H2O_STRIDE == 0
        snap_rows = rows >= n - w
        sel = (pick | snap_rows).nonzero().flatten()  # local row indices within this chunk
        probe = AttnProbe(layers=range(L), rows=sel)
        model.forward(x[s:e], cache, torch.arange(s, e), probe=probe)
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
        [cache.view(l)[1] for l in range(L)], h2o, snap)


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


def build_l1_parts(pf: Prefilled, layout: LayoutConfig, index_heads: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    idx, always = select_l1(pf, layout)
    L = len(pf.keys_raw)
    parts = {
        "l1_keys": to_numpy(torch.stack([pf.keys_raw[l][:, idx] for l in range(L)])),
        "l1_values": to_numpy(torch.stack([pf.values[l][:, idx] for l in range(L)])),
        "l1_pos": idx.numpy().astype(np.int32),
        "l1_chunk": (idx // layout.chunk_size).numpy().astype(np.int32),
        "l1_always": always.numpy().astype(np.uint8),
        "h2o_scores": pf.h2o.numpy().astype(np.float32),
        "snapkv_scores": pf.snapkv.numpy().astype(np.float32),
    }
    if index_heads:
        keys = torch.stack([pf.keys_rot[l][g].float().cpu() for l, g in index_heads])  # [H_idx, n, D]
        if layout.index_int8:
            q, scale = quantize_int8(keys)
            parts["index_keys"] = q.numpy()
            parts["index_scale"] = scale.numpy().astype(np.float32)
        else:
            parts["index_keys"] = keys.to(torch.float16).numpy()
    return parts


def iter_chunks(pf: Prefilled, chunk_size: int) -> Iterator[np.ndarray]:
    """L2 chunks in order, each [n_layers, 2, n_kv_heads, len_c, head_dim] with pre-RoPE keys."""
    for s in range(0, pf.n_tokens, chunk_size):
        e = min(pf.n_tokens, s + chunk_size)
        yield to_numpy(torch.stack([torch.stack([k[:, s:e], v[:, s:e]])
                                    for k, v in zip(pf.keys_raw, pf.values)]))
