"""Rotary position embedding (RoPE), applied to keys and queries at arbitrary positions.

Keys are stored before RoPE; `Rope.rotate` turns them into attention keys at whatever positions the
active cache gives them (their original ones, or renumbered ones in focus mode).
"""
from __future__ import annotations

import math
import threading

import torch

from .config import ModelConfig


def inv_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in fp32, with Llama 3 / linear scaling when configured."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.rope_scaling
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        # Same piecewise rule as Meta's reference and transformers' `_compute_llama3_parameters`.
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_ctx = rs["original_max_position_embeddings"]
        lo_wl, hi_wl = old_ctx / lo, old_ctx / hi
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > lo_wl, inv / factor, inv)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < hi_wl) & ~(wavelen > lo_wl)
        return torch.where(medium, smoothed, scaled)
    return inv


class Rope:
    """cos/sin tables grown on demand; `rotate` applies RoPE in the `rotate_half` convention of HF.

    Thread-safe: a server's request threads share one model, so the two tables are published together
    as one tuple (a reader never sees a grown cos beside the old sin) and never shrink."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str = "cpu"):
        self.inv_freq = inv_frequencies(cfg).to(device)
        self.device = torch.device(device)
        empty = torch.empty(0, cfg.head_dim, device=device)
        self._tables = (empty, empty)  # (cos, sin) [n, head_dim], replaced whole, never mutated
        self._grow = threading.Lock()

    def _ensure(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin tables covering positions < n (a snapshot: later growth does not change them)."""
        tables = self._tables
        if n <= tables[0].shape[0]:
            return tables
        with self._grow:
            tables = self._tables
            if n <= tables[0].shape[0]:
                return tables
            n = max(n, 2 * tables[0].shape[0], 1024)
            t = torch.arange(n, device=self.device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq)  # [n, d/2]
            emb = torch.cat([freqs, freqs], dim=-1)  # [n, d]
            self._tables = tables = (emb.cos(), emb.sin())
            return tables

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, head_dim] for integer positions [N]."""
        if positions.numel() == 0:
            z = torch.empty(0, self._tables[0].shape[1], device=self.device, dtype=dtype)
            return z, z
        if int(positions.min()) < 0:
            raise ValueError("RoPE positions must be non-negative")
        cos, sin = self._ensure(int(positions.max()) + 1)
        return cos[positions].to(dtype), sin[positions].to(dtype)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [..., N, D] rotated by cos/sin [N, D]."""
        h = x.shape[-1] // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
        return x * cos + rot * sin

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [..., N, D] (pre-RoPE keys or queries) at positions [N] -> rotated, same shape and dtype."""
        cos, sin = self.cos_sin(positions.to(self.device), x.dtype)
        return self.apply(x, cos, sin)
