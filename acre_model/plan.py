"""`Plan`: what a policy decided a question attends to. The engine's layout and fetcher read it; it knows
nothing of policies, so the refill side never imports the policy package."""
from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("exact", "focus")


@dataclass
class Plan:
    """Which document entries the answer attends to, and at which positions.

    Chunk-level policies name L2 chunks (refilled in full) and, with `use_l1`, keep the attend-set
    entries of every other chunk. Token-level baselines name tokens per layer in `tokens`.
    """

    chunks: list[int]  # L2 chunks refilled in full, ascending
    use_l1: bool = True  # attend the L1 entries of chunks not refilled
    tokens: torch.Tensor | None = None  # [n_layers, n_tokens] bool: token-level selection
    mode: str = "exact"  # "exact": original positions; "focus": renumbered 0..n-1 in document order
    entropy: float | None = None  # normalised entropy of `p` (chunk policies)
    k: int | None = None  # chunks chosen by the volume rule, before neighbours
    p: torch.Tensor | None = None  # [n_chunks] the locator's distribution the choice came from

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"plan mode must be one of {MODES}, got {self.mode!r}")
