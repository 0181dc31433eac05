"""An independent, naive Llama forward (eager attention with an explicit mask) for tests.

It shares no code with acre_model: every step is written out from the paper definitions, so
agreement with both acre_model and transformers is meaningful.
"""
from __future__ import annotations

import math

import torch


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, inv_freq):
    # x [H, T, D]; rotate_half convention
    ang = pos[:, None].double() * inv_freq[None, :].double()
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


def naive_forward(sd, cfg, ids, positions, mask, inv_freq):
    """All-position logits [T, vocab] of tokens ids [T] at positions [T]; mask [T, T] bool (True = may attend)."""
    g = lambda k: sd[k].float()
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    x = g("model.embed_tokens.weight")[ids]
    t = len(ids)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = _rms(x, g(p + "input_layernorm.weight"), cfg.rms_norm_eps)
        def proj(name):
            y = h @ g(p + f"self_attn.{name}.weight").T
            if p + f"self_attn.{name}.bias" in sd:
                y = y + g(p + f"self_attn.{name}.bias")
            return y
        q = proj("q_proj").view(t, nh, hd).transpose(0, 1)
        k = proj("k_proj").view(t, nkv, hd).transpose(0, 1)
        v = proj("v_proj").view(t, nkv, hd).transpose(0, 1)
        q, k = _rope(q, positions, inv_freq), _rope(k, positions, inv_freq)
        k = k.repeat_interleave(nh // nkv, 0)
        v = v.repeat_interleave(nh // nkv, 0)
        s = q @ k.transpose(1, 2) / math.sqrt(hd)
        s = s.masked_fill(~mask, float("-inf")).softmax(-1)
        a = (s @ v).transpose(0, 1).reshape(t, nh * hd)
        x = x + a @ g(p + "self_attn.o_proj.weight").T
        h = _rms(x, g(p + "post_attention_layernorm.weight"), cfg.rms_norm_eps)
        gate = h @ g(p + "mlp.gate_proj.weight").T
        up = h @ g(p + "mlp.up_proj.weight").T
        x = x + (torch.nn.functional.silu(gate) * up) @ g(p + "mlp.down_proj.weight").T
    x = _rms(x, g("model.norm.weight"), cfg.rms_norm_eps)
    w = sd.get("lm_head.weight", sd["model.embed_tokens.weight"]).float()
    return x @ w.T
