"""`fixed-k`: the locator index's top `fixed_k` chunks, no volume rule; an ablation."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .chunk_policy import ChunkPolicy


@dataclass
class FixedKPolicy(ChunkPolicy):
    name = "fixed-k"

    fixed_k: int = 2  # acre's measured mean k (1.9), so both spend the same KV

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(isinstance(self.fixed_k, int) and self.fixed_k >= 1, "fixed_k must be an integer >= 1")

    def volume(self, p: torch.Tensor) -> int:
        return self.fixed_k
