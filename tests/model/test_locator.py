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


def _peaks(m: int, n: int = 64, height: float = 1.0, background: float = 0.02) -> torch.Tensor:
    """Chunk scores: m equal peaks (evidence in m places) over a flat background of weak matches."""
    s = torch.full((n,), background)
    s[torch.arange(m) * (n // max(m, 1))] = height
    return s


def test_the_adaptive_k_is_monotone_in_spread_and_bounded_by_the_budget():
    from acre_model.policies import make_policy

    pol = make_policy("acre")
    # evidence in m places: k grows with m (one needle -> one chunk, several places -> as many chunks)
    ks = [pol.volume(loc.to_distribution(_peaks(m), pol.p_power)) for m in range(1, 9)]
    assert ks[0] == 1 and all(a <= b for a, b in zip(ks, ks[1:])) and ks[-1] > ks[0]
    assert ks[3] >= 2  # four values in four places are not one chunk's worth
    # the same mass spread ever more evenly (a softer softmax): k never falls
    logits = torch.linspace(6.0, 0.0, 64)
    ks = [volume.coverage_to_k(torch.softmax(logits / t, 0), 0.6, 1, 64) for t in (0.05, 0.2, 0.5, 1, 2, 4, 8, 1e3)]
    assert all(a <= b for a, b in zip(ks, ks[1:])) and ks[0] == 1 and ks[-1] >= 0.6 * 64 - 1
    # bounds: k_min, k_max, and the KV budget (neighbours included) whatever the spread
    flat = loc.to_distribution(torch.ones(64))
    assert volume.coverage_to_k(flat, 0.9, 1, 5) == 5 and volume.coverage_to_k(loc.to_distribution(_peaks(1), 2.0), 0.5, 3, 8) == 3
    for budget in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0):
        pol = make_policy("acre", kv_budget=budget, k_max=64)
        for m in (1, 4, 16, 64):
            p = loc.to_distribution(_peaks(m), pol.p_power)
            k = pol.volume(p)
            refilled = volume.with_neighbors(p.topk(k).indices.tolist(), pol.neighbors, 64)
            assert 1 <= k and (len(refilled) <= budget * 64 or k == 1), (budget, m, k)
    for name in ("acre", "acre-entropy"):
        with __import__("pytest").raises(Exception, match="kv_budget"):
            make_policy(name, kv_budget=0)
    assert make_policy("acre-entropy", kv_budget=0.05).volume(flat) == 1  # 3 chunks of 64 with neighbours
