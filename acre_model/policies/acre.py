"""`acre`: the locator index picks chunks, entropy sets how many, neighbours come along."""
from __future__ import annotations

from dataclasses import dataclass

from .chunk_policy import EntropyVolumePolicy


@dataclass
class AcrePolicy(EntropyVolumePolicy):
    name = "acre"
