"""`acre`: the locator index picks chunks, the coverage rule sets how many, neighbours come along.
`acre-entropy`: the same with the seed's entropy rule (k from H(p)), kept for the comparison."""
from __future__ import annotations

from dataclasses import dataclass

from .chunk_policy import CoverageVolumePolicy, EntropyVolumePolicy


@dataclass
class AcrePolicy(CoverageVolumePolicy):
    name = "acre"


@dataclass
class AcreEntropyPolicy(EntropyVolumePolicy):
    name = "acre-entropy"
