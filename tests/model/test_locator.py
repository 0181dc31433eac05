"""Locator and volume maths: the entropy-to-k rule, the max-per-chunk rule, neighbours."""
from __future__ import annotations

import math

import torch

from acre_model import locator as loc
from acre_model import volume


def test_entropy_to_k_is_monotone_and_bounded():
    ks = [volume.entropy_to_k(h / 20, 2, 8, 100) for h in range(21)]
    assert ks[0] == 2 and ks[-1] == 8
    assert all(a <= b for a, b in zip(ks, ks[1:]))
    assert volume.entropy_to_k(5.0, 2, 8, 100) == 8 and volume.entropy_to_k(-1.0, 2, 8, 100) == 2
    assert volume.entropy_to_k(1.0, 2, 8, 5) == 5  # never more chunks than exist


def test_normalized_entropy_extremes():
    assert volume.normalized_entropy(torch.tensor([1.0, 0, 0, 0])) == 0.0
    assert math.isclose(volume.normalized_entropy(torch.full((16,), 1 / 16)), 1.0, rel_tol=1e-6)
    peaked = loc.to_distribution(torch.tensor([10.0, 1, 1, 1]))
    flat = loc.to_distribution(torch.tensor([3.0, 2, 2, 2]))
    assert volume.normalized_entropy(peaked) < volume.normalized_entropy(flat)


def test_max_per_chunk_handles_a_short_last_chunk():
    x = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3])
    assert torch.equal(loc.max_per_chunk(x, 5, 2), torch.tensor([0.5, 0.9, 0.3]))


def test_with_neighbors_clips_at_edges():
    assert volume.with_neighbors([0, 5], 1, 6) == [0, 1, 4, 5]
    assert volume.with_neighbors([2], 0, 6) == [2]
