"""`fixed-k`: the locator index's top `fixed_k` chunks, no volume rule; an ablation."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .chunk_policy import ChunkPolicy


@dataclass
class FixedKPolicy(ChunkPolicy):
    name = "fixed-k"

    # acre's mean k on the probe seeds is 2.7 (docs/results.md, "Adaptive volume"): 3 spends at least its KV
    fixed_k: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(isinstance(self.fixed_k, int) and self.fixed_k >= 1, "fixed_k must be an integer >= 1")

    def volume(self, p: torch.Tensor) -> int:
        return self.fixed_k
