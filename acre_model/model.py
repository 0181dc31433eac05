"""A Llama-family decoder in pure torch over an explicit, entry-addressable KV cache.

RMSNorm, RoPE, grouped-query attention through `scaled_dot_product_attention`, SwiGLU. Every sequence
has a cache of its own: `forward` runs one sequence's new tokens; `forward_batch` (questions' pass 2)
and `decode_batch` (one decoding step) run several sequences' tokens through the matrix products at
once while each attends over its own cache. Weights use the Hugging Face parameter names so a
`model.safetensors` loads without renaming.

Gemma 3 is the same code under its config's switches (`ModelConfig.is_gemma3`, `layer_types`): norms
scale by (1 + weight), q/k are normalised per head before RoPE, attention and MLP outputs are normalised
before the residual add, the MLP gates with tanh-GELU, embeddings are scaled by sqrt(hidden_size), and
local layers attend through a sliding window with RoPE of their own base.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .kv_cache import KVCache
from .rope import Rope


class RMSNorm(nn.Module):
    """offset 0: Llama's `weight * x`; offset 1: Gemma's `(1 + weight) * x`, whose checkpoints store the
    weight minus one (so a zero weight is the identity)."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics whatever the activation dtype (as transformers' LlamaRMSNorm).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            # Gemma scales in fp32 and casts after (transformers' Gemma3RMSNorm); Llama casts first.
            return (xf * (self.offset + self.weight.float())).to(x.dtype)
        return self.weight * xf.to(x.dtype)


def _norm(cfg: ModelConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, cfg.rms_norm_eps, 1.0 if cfg.is_gemma3 else 0.0)


# Local layers attend in query blocks of this many rows, each over its own window of keys only, so a
# long prefill costs T x (block + window) instead of T x T.
LOCAL_BLOCK = 1024


def window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """[R, n] bool: key at k_pos [n] lies inside the sliding window of the query at q_pos [R]
    (fewer than `window` positions back; transformers' `kv_idx > q_idx - sliding_window`)."""
    return (q_pos[:, None] - k_pos[None, :]) < window


@dataclass
class AttnProbe:
    """Ask a forward pass for attention details at chosen layers.

    layers: which layers to record; rows: which of the new tokens' query rows (None = all).
    After the forward: probs[layer] = [n_heads, n_rows, n_keys] attention probabilities over the whole
    cache including the new tokens (fp32; only when `want_probs`), queries[layer] = [n_heads, n_rows,
    head_dim] the rotated queries (only when `want_queries`), at `query_rows` when given (else `rows`):
    the ingest records every row's queries (InfLLM's representative scores) but few rows' probabilities.
    """

    layers: Sequence[int]
    rows: slice | torch.Tensor | None = None
    want_probs: bool = True
    want_queries: bool = False
    query_rows: slice | torch.Tensor | None = None
    probs: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.n_rep = cfg.n_rep
        self.scale = cfg.attn_scale
        self.window = cfg.sliding_window if cfg.is_local(layer) else None  # None: global attention
        b = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.hd, bias=b)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=b)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=b)
        self.o_proj = nn.Linear(self.n_heads * self.hd, cfg.hidden_size, bias=False)
        if cfg.is_gemma3:  # per-head RMSNorm of queries and keys, before RoPE
            self.q_norm = _norm(cfg, self.hd)
            self.k_norm = _norm(cfg, self.hd)
        self._fused: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def fuse(self) -> None:
        """Concatenate q/k/v into one matmul (one kernel launch instead of three per layer)."""
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]).detach()
        b = None
        if self.q_proj.bias is not None:
            b = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]).detach()
        self._fused = (w, b)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> q [T, Hq*D], k and v [T, Hkv*D] (q and k normalised per head if the model
        has q/k norms)."""
        if self._fused is not None:
            qkv = F.linear(x, *self._fused)
            q, k, v = qkv.split([self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], -1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if hasattr(self, "q_norm"):
            t = x.shape[0]
            q = self.q_norm(q.view(t, self.n_heads, self.hd)).view(t, -1)
            k = self.k_norm(k.view(t, self.n_kv, self.hd)).view(t, -1)
        return q, k, v

    def forward(self, x: torch.Tensor, layer: int, cache: KVCache, positions: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, probe: AttnProbe | None) -> torch.Tensor:
        # x: [T, hidden]; positions/cos/sin: [T] / [T, hd]
        q, k_raw, k_rot, v = self._heads(x, cos, sin)
        return self.o_proj(self._attend(q, k_raw, k_rot, v, layer, cache, positions, probe))

    def forward_spans(self, x: torch.Tensor, layer: int,
                      spans: Sequence[tuple[int, int, KVCache, AttnProbe | None]],
                      positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Several sequences' new tokens in one tensor: rows [s, s + t) of x belong to the cache (and
        probe, or None) of span (s, t, cache, probe). Projections and RoPE run over all rows at once; each
        span attends over its own cache exactly as `forward` does alone. Rows outside every span are
        padding (zero before o_proj)."""
        q, k_raw, k_rot, v = self._heads(x, cos, sin)
        out = x.new_zeros(x.shape[0], self.n_heads * self.hd)
        for s, t, cache, probe in spans:
            r = slice(s, s + t)
            out[r] = self._attend(q[:, r], k_raw[:, r], k_rot[:, r], v[:, r], layer, cache, positions[r], probe)
        return self.o_proj(out)

    def _heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [T, hidden] -> rotated q [Hq, T, D], pre-RoPE and rotated k [Hkv, T, D], v [Hkv, T, D]."""
        t = x.shape[0]
        q, k, v = self._project(x)
        q = q.view(t, self.n_heads, self.hd).transpose(0, 1)
        k_raw = k.view(t, self.n_kv, self.hd).transpose(0, 1)
        v = v.view(t, self.n_kv, self.hd).transpose(0, 1)
        if t > 1:
            # Head-major rows: the CPU flash kernel runs 1.25x faster at 4k on contiguous q/k/v than on
            # the projections' token-major views (measured: 278 vs 218 ms per layer, one thread).
            q, k_raw, v = q.contiguous(), k_raw.contiguous(), v.contiguous()
        return Rope.apply(q, cos, sin), k_raw, Rope.apply(k_raw, cos, sin), v

    def _attend(self, q: torch.Tensor, k_raw: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor, layer: int,
                cache: KVCache, positions: torch.Tensor, probe: AttnProbe | None) -> torch.Tensor:
        """New tokens' rotated q [Hq, T, D], k (pre-RoPE and rotated) and v [Hkv, T, D]: append to the
        cache, attend over it. Returns the attention output [T, Hq*D] (before o_proj)."""
        t = q.shape[1]
        if t > 1 and not q.is_contiguous():  # a span of a batch: contiguous rows for the flash kernel
            q, k_rot, v = q.contiguous(), k_rot.contiguous(), v.contiguous()
        n_past = cache.length(layer)
        keys, values = cache.append(layer, k_rot, v, positions, k_raw if cache.keep_raw else None)
        n = keys.shape[1]
        k4, v4 = keys.unsqueeze(0), values.unsqueeze(0)  # [1, Hkv, n, D]
        sc = self.scale
        if self.window is not None:
            # from empty: the fresh, contiguous K/V, as the global prefill below (faster kernel)
            kv = (k_rot, v) if n_past == 0 else (keys, values)
            out = self._local(q, *kv, positions, cache.view(layer)[2], n_past)
        elif t == 1:
            # Decode: the n_rep query heads of a KV head become n_rep query rows of it, so GQA reads
            # K/V once and needs no mask (measured 1.4-1.7x faster than enable_gqa at 4k-8k on CPU).
            out = F.scaled_dot_product_attention(q.reshape(1, self.n_kv, self.n_rep, self.hd), k4, v4,
                                                 scale=sc)
        elif n_past == 0:
            # Prefill from empty: the fused causal kernel (3x faster than an explicit mask at 4k).
            # The fresh K/V (contiguous) rather than the cache's views of them (strided by its capacity).
            out = F.scaled_dot_product_attention(q.unsqueeze(0), k_rot.unsqueeze(0), v.unsqueeze(0),
                                                 is_causal=True, enable_gqa=True, scale=sc)
        else:
            # New tokens after cached entries: all cached entries are visible, causal among the new.
            mask = torch.ones(t, n, dtype=torch.bool, device=q.device).tril(n_past)
            out = F.scaled_dot_product_attention(q.unsqueeze(0), k4, v4, attn_mask=mask, enable_gqa=True,
                                                 scale=sc)
        out = out.reshape(self.n_heads, t, self.hd).transpose(0, 1).reshape(t, self.n_heads * self.hd)
        if probe is not None and layer in probe.layers:
            self._record(probe, layer, q, keys, n_past, positions, cache.view(layer)[2])
        return out

    def _local(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, q_pos: torch.Tensor,
               k_pos: torch.Tensor, n_past: int) -> torch.Tensor:
        """Sliding-window attention of new queries q [Hq, T, D] at q_pos [T] over the layer's entries
        keys/values [Hkv, n, D] at k_pos [n], the last T of which are the new tokens' own.

        Visible: what the global rule shows (every cached entry, the new tokens causally) AND within the
        window by position. Queries go in blocks of LOCAL_BLOCK rows; when the cache's positions are
        sorted (a prefill, a decode after one) a block, or a decoded token, reads only keys from its
        window's start on. Returns [1, Hq, T, D]."""
        t = q.shape[1]
        ordered = bool((k_pos[1:] >= k_pos[:-1]).all())
        if t == 1:
            q1 = q.reshape(1, self.n_kv, self.n_rep, self.hd)
            if ordered:  # a decode after a prefill: only the window's own keys, no mask
                lo = int(torch.searchsorted(k_pos, q_pos - self.window + 1))
                o = F.scaled_dot_product_attention(q1, keys[:, lo:].unsqueeze(0), values[:, lo:].unsqueeze(0),
                                                   scale=self.scale)
            else:
                mask = window_mask(q_pos, k_pos, self.window)  # [1, n]
                o = F.scaled_dot_product_attention(q1, keys.unsqueeze(0), values.unsqueeze(0), attn_mask=mask,
                                                   scale=self.scale)
            return o.reshape(1, self.n_heads, 1, self.hd)
        outs = []
        for a in range(0, t, LOCAL_BLOCK):
            b = min(t, a + LOCAL_BLOCK)
            hi = n_past + b  # entries after this are later new tokens: never visible to the block
            lo = 0
            if ordered:
                lo = int(torch.searchsorted(k_pos[:hi], q_pos[a:b].min() - self.window + 1))
            rows = torch.arange(n_past + a, n_past + b, device=q.device)
            mask = (torch.arange(lo, hi, device=q.device)[None, :] <= rows[:, None]) \
                & window_mask(q_pos[a:b], k_pos[lo:hi], self.window)
            outs.append(F.scaled_dot_product_attention(
                q[:, a:b].unsqueeze(0), keys[:, lo:hi].unsqueeze(0), values[:, lo:hi].unsqueeze(0),
                attn_mask=mask, enable_gqa=True, scale=self.scale))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def _record(self, probe: AttnProbe, layer: int, q: torch.Tensor, keys: torch.Tensor,
                n_past: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
        t = q.shape[1]
        rows = torch.arange(t, device=q.device)
        if probe.rows is not None:
            rows = rows[probe.rows]
        qr = q[:, rows].float()  # [Hq, R, D]
        if probe.want_queries:
            probe.queries[layer] = qr if probe.query_rows is None else q[:, probe.query_rows].float()
        if probe.want_probs:
            kf = keys.float().repeat_interleave(self.n_rep, dim=0)  # [Hq, n, D]
            scores = qr @ kf.transpose(1, 2) * self.scale  # [Hq, R, n]
            n = keys.shape[1]
            allowed = torch.arange(n, device=q.device)[None, :] <= (n_past + rows)[:, None]
            if self.window is not None:
                allowed &= window_mask(q_pos[rows], k_pos, self.window)
            scores = scores.masked_fill(~allowed, float("-inf"))
            probe.probs[layer] = scores.softmax(-1)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = (lambda g: F.gelu(g, approximate="tanh")) if cfg.hidden_act == "gelu_pytorch_tanh" else F.silu
        self._fused: torch.Tensor | None = None

    def fuse(self) -> None:
        self._fused = torch.cat([self.gate_proj.weight, self.up_proj.weight]).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused is not None:
            g, u = F.linear(x, self._fused).chunk(2, dim=-1)
        else:
            g, u = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(g) * u)


class DecoderLayer(nn.Module):
    """Llama: h += attn(norm1(h)); h += mlp(norm2(h)), norm2 named post_attention_layernorm.
    Gemma ("sandwich"): h += norm2(attn(norm1(h))); h += norm4(mlp(norm3(h))), norm2..4 named
    post_attention_, pre_feedforward_ and post_feedforward_layernorm (transformers' names)."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = _norm(cfg, cfg.hidden_size)
        self.post_attention_layernorm = _norm(cfg, cfg.hidden_size)
        self.sandwich = cfg.is_gemma3
        if self.sandwich:
            self.pre_feedforward_layernorm = _norm(cfg, cfg.hidden_size)
            self.post_feedforward_layernorm = _norm(cfg, cfg.hidden_size)

    def residual(self, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """h [T, hidden] after adding the attention output attn_out (of input_layernorm(h)) and the MLP."""
        if not self.sandwich:
            h = h + attn_out
            return h + self.mlp(self.post_attention_layernorm(h))
        h = h + self.post_attention_layernorm(attn_out)
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class _Body(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = _norm(cfg, cfg.hidden_size)


ROW_MULTIPLE = 4  # decode_batch pads its rows to a multiple of this (see there)

# Called after each layer with (layer index, cache) so a caller can, e.g., wait for the next layer's
# refilled chunks before that layer runs.
LayerHook = Callable[[int, KVCache], None]


@dataclass
class BatchItem:
    """One sequence of `LlamaModel.forward_batch`: new tokens ids [T] at positions [T] over `cache`;
    `probe` records its attention details (pass 1)."""

    ids: torch.Tensor
    cache: KVCache
    positions: torch.Tensor
    before_layer: LayerHook | None = None
    probe: AttnProbe | None = None


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _Body(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size,
                                                                      bias=False)
        self.rope: Rope | None = None  # built by finalize(), once the device is known
        self.ropes: list[Rope] = []  # per layer: `rope`, or on local layers the local-base one

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def finalize(self) -> "LlamaModel":
        """Call after weights are loaded and the model is moved: fuses projections, builds RoPE."""
        self.eval().requires_grad_(False)
        for lay in self.model.layers:
            lay.self_attn.fuse()
            lay.mlp.fuse()
        self.rope = Rope(self.cfg, self.device)
        local = Rope(self.cfg.local_rope_config(), self.device) if self.cfg.layer_types else None
        self.ropes = [local if self.cfg.is_local(i) else self.rope for i in range(self.cfg.num_hidden_layers)]
        return self

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> [T, hidden]; Gemma scales by sqrt(hidden_size), rounded to the weights' dtype
        (as transformers)."""
        h = self.model.embed_tokens(ids)
        if self.cfg.is_gemma3:
            h = h * torch.tensor(self.cfg.hidden_size ** 0.5, dtype=h.dtype)
        return h

    def _cos_sin(self, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (cos, sin) [T, head_dim] of positions [T], computed once per distinct RoPE."""
        tables = {id(r): r.cos_sin(positions, self.dtype) for r in dict.fromkeys(self.ropes)}
        return [tables[id(r)] for r in self.ropes]

    def new_cache(self, capacity: int = 256, keep_raw: bool = False) -> KVCache:
        return KVCache.for_model(self.cfg, capacity=capacity, dtype=self.dtype, device=self.device,
                                 keep_raw=keep_raw)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        out = F.linear(h, w).float()
        cap = self.cfg.final_logit_softcapping
        return out if not cap else torch.tanh(out / cap) * cap

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, cache: KVCache, positions: torch.Tensor | None = None,
                *, probe: AttnProbe | None = None, all_logits: bool = False,
                before_layer: LayerHook | None = None, last_layer: int | None = None) -> torch.Tensor | None:
        """Run new tokens input_ids [T] over `cache` (appended to it).

        positions [T] default to continuing after the cache's largest position. Returns logits
        [vocab] of the last token, or [T, vocab] with all_logits. `before_layer(i, cache)` runs before
        layer i (the refill pipeline uses it to install layer i's chunks just in time).

        `last_layer`: run layers 0..last_layer only, up to that layer's attention, and return None: what
        a probe needs (a layer's queries and attention do not depend on any later layer). The cache may
        then hold just those layers.
        """
        ids = input_ids.to(self.device).view(-1)
        t = ids.shape[0]
        if t == 0:
            raise ValueError("forward needs at least one token")
        if positions is None:
            start = cache.next_position()
            positions = torch.arange(start, start + t, device=self.device)
        positions = positions.to(self.device)
        cs = self._cos_sin(positions)
        h = self.embed(ids)
        for i, lay in enumerate(self.model.layers):
            if before_layer is not None:
                before_layer(i, cache)
            attn = lay.self_attn(lay.input_layernorm(h), i, cache, positions, *cs[i], probe)
            if i == last_layer:
                return None
            h = lay.residual(h, attn)
        if not all_logits:
            h = h[-1:]
        out = self.logits(self.model.norm(h))
        return out if all_logits else out[0]

    @torch.inference_mode()
    def decode_batch(self, tokens: Sequence[int], caches: Sequence[KVCache]) -> torch.Tensor:
        """One decoding step of independent sequences: token b is appended to caches[b] at the position
        after its last entry. Returns logits [B, vocab].

        The matrix products run over all rows at once (the weights are read once per step, which is
        what batching buys); attention runs per sequence over its own cache. Rows are padded to a
        multiple of ROW_MULTIPLE: on the CPU's BLAS a row's result is then the same whatever the other
        rows are (measured: bitwise equal for 4, 8, 12, 16, 20, 32 and 64 rows; 1, 2, 3 and 7 rows
        differ from them in the last bits), so a question answers the same alone and in any batch.
        """
        b = len(caches)
        if b == 0 or len(tokens) != b:
            raise ValueError(f"decode_batch needs one token per cache, got {len(tokens)} and {b}")
        rows = -(-b // ROW_MULTIPLE) * ROW_MULTIPLE
        ids = torch.zeros(rows, dtype=torch.long)
        ids[:b] = torch.as_tensor(list(tokens), dtype=torch.long)
        pos = torch.zeros(rows, dtype=torch.long)
        pos[:b] = torch.tensor([c.next_position() for c in caches])
        ids, pos = ids.to(self.device), pos.to(self.device)
        cs = self._cos_sin(pos)
        h = self.embed(ids)
        spans = [(j, 1, cache, None) for j, cache in enumerate(caches)]  # rows past b are padding
        for i, lay in enumerate(self.model.layers):
            h = lay.residual(h, lay.self_attn.forward_spans(lay.input_layernorm(h), i, spans, pos, *cs[i]))
        return self.logits(self.model.norm(h))[:b]

    @torch.inference_mode()
    def forward_batch(self, items: Sequence["BatchItem"], *, last_layer: int | None = None
                      ) -> list[torch.Tensor | BaseException | None]:
        """Several sequences' new tokens, each over its own cache, in one forward (pass 1 or pass 2 of
        questions planned together). Returns per item the logits [vocab] of its last token, or the
        exception its `before_layer` hook raised (that item leaves the forward; the others go on).
        `last_layer`: as in `forward`, layers 0..last_layer only (up to its attention, what the items'
        probes record), and None in place of each item's logits.

        Each item's rows are padded to a multiple of ROW_MULTIPLE, so that an item's numbers are the
        same in a batch of one and in any batch (the CPU BLAS gives a row the same bits whatever the
        other rows are when blocks are multiples of 4; measured). The matrix products run over all rows.
        """
        if not items:
            return []
        spans, starts, r = [], [], 0
        for it in items:
            t = int(it.ids.numel())
            if t == 0 or int(it.positions.numel()) != t:
                raise ValueError("forward_batch: each item needs at least one token and one position per token")
            starts.append(r)
            r += -(-t // ROW_MULTIPLE) * ROW_MULTIPLE
        ids = torch.zeros(r, dtype=torch.long)
        pos = torch.zeros(r, dtype=torch.long)
        for it, s in zip(items, starts):
            t = int(it.ids.numel())
            ids[s:s + t] = it.ids.view(-1).cpu()
            pos[s:s + t] = it.positions.view(-1).cpu()
        ids, pos = ids.to(self.device), pos.to(self.device)
        cs = self._cos_sin(pos)
        results: list[torch.Tensor | BaseException | None] = [None] * len(items)
        h = self.embed(ids)
        for i, lay in enumerate(self.model.layers):
            spans = []
            for j, (it, s) in enumerate(zip(items, starts)):
                if results[j] is not None:
                    continue  # failed earlier
                if it.before_layer is not None:
                    try:
                        it.before_layer(i, it.cache)
                    except BaseException as e:  # this item's refill failed: it leaves the batch
                        results[j] = e
                        continue
                spans.append((s, int(it.ids.numel()), it.cache, it.probe))
            attn = lay.self_attn.forward_spans(lay.input_layernorm(h), i, spans, pos, *cs[i])
            if i == last_layer:
                return results
            h = lay.residual(h, attn)
        last = [s + int(it.ids.numel()) - 1 for it, s in zip(items, starts)]
        last += [0] * (-len(last) % ROW_MULTIPLE)  # the head's rows padded too, for the same reason
        logits = self.logits(self.model.norm(h[torch.tensor(last, device=self.device)]))
        return [res if res is not None else logits[j] for j, res in enumerate(results)]

    def prefill(self, input_ids: torch.Tensor, cache: KVCache, positions: torch.Tensor | None = None,
                *, chunk_size: int = 4096, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Chunked prefill: memory stays bounded by `chunk_size` x cache length. Returns last logits."""
        ids = input_ids.view(-1)
        n = ids.shape[0]
        if positions is None:
            start = cache.next_position()
            positions = torch.arange(start, start + n)
        cache.reserve(n)
        logits = None
        for s in range(0, n, chunk_size):
            e = min(n, s + chunk_size)
            logits = self.forward(ids[s:e], cache, positions[s:e])
            if progress is not None:
                progress(e - s)
        assert logits is not None
        return logits
