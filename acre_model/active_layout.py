"""`ActiveLayout`: which document entries each layer attends for one question, and at which positions.

Built from a `Plan` and the document's L1 map alone (no KV bytes), so it is pure and unit-tested. Per
layer, the active document entries are: the attend-set (L1) entries of chunks not refilled (when the
plan uses L1), every token of each refilled chunk, and a token-level plan's picks (from L1 when the
attend set holds them, else from their chunk). They are installed sorted by original position.

Position mode is decided here and nowhere else: in `exact` mode keys are rotated at their original
positions and the question continues after the document (equal to full attention when every chunk is
refilled); in `focus` mode the active entries are renumbered 0..n-1 in document order and the question
continues after the longest layer, so a small model sees a short, dense context.

A hybrid model's document stored with its global layers only: its local (sliding-window) layers are
never refilled. Each attends its window entries: the document's last `sliding_window` tokens (all that a
token after the document can see through the window), and in focus mode with `local_sinks` the
document's first `n_sink` tokens too. In exact mode they sit at their original positions (so `full` is
a plain forward); in focus mode the window is renumbered to end just before the question (which
continues after the longest layer's window or entries), keeping each entry's distance to the question:
the window sees what it would see right after the document. Sinks share the positions of the window's
newest `n_sink` entries: the window mask is by position, so only there do the question and the answer
see them (placed before the window they would be out of its reach), and they move the question no later.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .doc_state import DocState
from .plan import Plan

# A hybrid model's local layers in focus mode: attend the document's sinks besides its last window
# (measured: docs/algorithm.md, "Hybrid models").
LOCAL_SINKS = False

# chunk_layer(c, layer) -> [2, n_kv_heads, len_c, head_dim]: one layer of one chunk, pre-RoPE keys
ChunkLayer = Callable[[int, int], torch.Tensor]


@dataclass
class LayerEntries:
    """The active document entries of one layer (all index tensors on the CPU)."""

    l1: torch.Tensor  # [n_a] indices into the attend set
    chunks: list[int]  # chunks taken whole
    token_groups: list[tuple[int, torch.Tensor]]  # (chunk, [m] offsets inside it) of token-level picks
    order: torch.Tensor  # [n] sorts the concatenation (l1, chunks, token groups) by original position
    positions: torch.Tensor  # [n] original positions, ascending
    rope_positions: torch.Tensor  # [n] the positions keys are rotated at (original, or 0..n-1 in focus)
    window: torch.Tensor | None = None  # an unstored local layer: [n] indices into its window entries
    n_sinks: int = 0  # of those, sinks that share the window's newest positions (focus, local sinks)

    @property
    def n(self) -> int:
        return int(self.positions.numel())


@dataclass
class ActiveLayout:
    mode: str
    n_tokens: int  # document tokens
    chunk_size: int
    layers: list[LayerEntries]
    chunks_needed: list[int]  # every chunk some layer reads from (whole or token-level), ascending

    @classmethod
    def build(cls, plan: Plan, doc: DocState, n_layers: int, local_sinks: bool | None = None) -> "ActiveLayout":
        n, C = doc.n_tokens, doc.chunk_size
        l1_pos, l1_chunk = doc.l1_pos.cpu(), doc.l1_chunk.cpu()
        refilled = torch.zeros(doc.n_chunks, dtype=torch.bool)
        if plan.chunks:
            refilled[torch.tensor(plan.chunks)] = True
        # L1 entries of chunks not refilled (if the plan uses L1)
        base = (~refilled[l1_chunk]) if plan.use_l1 else torch.zeros(doc.n_l1, dtype=torch.bool)
        in_l1 = torch.zeros(n, dtype=torch.bool)
        in_l1[l1_pos] = True
        in_refilled = refilled.repeat_interleave(C)[:n]  # [n] token lies in a refilled chunk
        whole = [torch.arange(c * C, min(n, (c + 1) * C)) for c in plan.chunks]
        needed = set(plan.chunks)
        layers = []
        local_sinks = LOCAL_SINKS if local_sinks is None else local_sinks
        for layer in range(n_layers):
            if not doc.is_stored(layer):  # a local layer of a hybrid document: its window, never refilled
                wpos = doc.win_pos.cpu()
                in_window = wpos >= n - int(doc.extra.get("window", n))
                keep = torch.ones_like(in_window) if plan.mode == "focus" and local_sinks else in_window
                idx = keep.nonzero().flatten()
                pos = wpos[idx]
                layers.append(LayerEntries(torch.empty(0, dtype=torch.long), [], [], torch.arange(pos.numel()),
                                           pos, pos, window=idx, n_sinks=int((~in_window[idx]).sum())))
                continue
            sel = base.clone()
            extra = torch.empty(0, dtype=torch.long)
            if plan.tokens is not None:
                want = plan.tokens[layer].cpu() & ~in_refilled
                sel |= want[l1_pos]  # picks the attend set already holds come from L1
                extra = (want & ~in_l1).nonzero().flatten()  # the rest come from their chunks
            l1 = sel.nonzero().flatten()
            groups = [(c, extra[extra // C == c] - c * C) for c in (extra // C).unique().tolist()]
            needed.update(c for c, _ in groups)
            pos = torch.cat([l1_pos[l1], *whole, extra])
            order = pos.argsort()
            pos = pos[order]
            rope = torch.arange(pos.numel()) if plan.mode == "focus" else pos
            layers.append(LayerEntries(l1, list(plan.chunks), groups, order, pos, rope))
        out = cls(plan.mode, n, C, layers, sorted(needed))
        if plan.mode == "focus":  # window entries end just before the question; sinks share the newest
            q0 = out.question_start
            for e in layers:
                if e.window is not None:
                    e.rope_positions = torch.cat([torch.arange(q0 - e.n_sinks, q0),
                                                  torch.arange(q0 - (e.n - e.n_sinks), q0)])
        return out

    @property
    def n_active(self) -> list[int]:
        """Active document entries per layer."""
        return [e.n for e in self.layers]

    @property
    def question_start(self) -> int:
        """Position of the question's first token (focus: after the longest layer; a local layer's sinks
        share its window's positions, so they do not count)."""
        if self.mode != "focus":
            return self.n_tokens
        return max((e.n - e.n_sinks for e in self.layers), default=0)

    def question_positions(self, n_question: int) -> torch.Tensor:
        return torch.arange(self.question_start, self.question_start + n_question)

    @property
    def kv_ratio(self) -> float:
        """Active document entries / document tokens, averaged over layers."""
        return sum(self.n_active) / len(self.layers) / self.n_tokens

    def assemble(self, layer: int, doc: DocState, chunk_layer: ChunkLayer
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(k pre-RoPE, v) [n_kv_heads, n, head_dim] and rope positions [n] of a layer's active entries,
        in position order; None when the layer attends no document entry."""
        e = self.layers[layer]
        if not e.n:
            return None
        if e.window is not None:
            k, v = doc.window_of(layer)
            idx = e.window.to(k.device)
            return k[:, idx], v[:, idx], e.rope_positions.to(k.device)
        ks, vs = [], []
        if e.l1.numel():
            idx = e.l1.to(doc.l1_keys.device)
            ks.append(doc.l1_keys[doc.slot(layer)][:, idx])
            vs.append(doc.l1_values[doc.slot(layer)][:, idx])
        for c in e.chunks:
            kv = chunk_layer(c, layer)
            ks.append(kv[0])
            vs.append(kv[1])
        for c, local in e.token_groups:
            kv = chunk_layer(c, layer)[:, :, local.to(doc.l1_keys.device)]
            ks.append(kv[0])
            vs.append(kv[1])
        device = ks[0].device
        order = e.order.to(device)
        return torch.cat(ks, 1)[:, order], torch.cat(vs, 1)[:, order], e.rope_positions.to(device)
