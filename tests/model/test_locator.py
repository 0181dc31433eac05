"""Locator and volume maths: the entropy-to-k rule, the max-per-chunk rule, neighbours."""
from __future__ import annotations

import math

import pytest
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


def test_distinct_places_count_a_fact_that_straddles_a_boundary_once():
    """Four facts, each split over two adjacent chunks: top-k spends two of its k on each fact, distinct
    places take one chunk per fact (its neighbours bring the other half), and the coverage rule over places
    needs 4 places where plain coverage needs 6+ chunks; one straddling fact is one place."""
    p = torch.zeros(100)
    for c, v in [(10, .5), (11, .45), (40, .4), (41, .35), (70, .3), (71, .25), (90, .2), (91, .15)]:
        p[c] = v
    p = p / p.sum()
    assert sorted(p.topk(4).indices.tolist()) == [10, 11, 40, 41]  # two facts' worth
    assert volume.distinct_order(p, 1, 4) == [10, 40, 70, 90]
    refilled = volume.with_neighbors(volume.distinct_order(p, 1, 4), 1, 100)
    assert {11, 41, 71, 91} <= set(refilled)  # the other halves come as neighbours
    assert volume.coverage_places_k(p, 0.9, 1, 8, 1) == 4 and volume.coverage_to_k(p, 0.9, 1, 8) >= 6
    assert volume.coverage_places_k(p, 0.9, 1, 3, 1) == 3  # k_max bounds the places
    one = torch.zeros(100)
    one[[50, 51]] = torch.tensor([0.6, 0.4])
    assert volume.coverage_places_k(one, 0.9, 1, 8, 1) == 1 and volume.coverage_to_k(one, 0.9, 1, 8) == 2
    # radius 0 (no neighbours): every chunk is its own place, as top-k
    assert volume.distinct_order(p, 0, 8) == p.topk(8).indices.tolist()
    assert volume.coverage_places_k(p, 0.9, 1, 8, 0) == volume.coverage_to_k(p, 0.9, 1, 8)
    # the policies' knob: the plan's chunks are the places' and k counts places
    from acre_model.policies import make_policy

    pol, plain = make_policy("acre", distinct=True), make_policy("acre")
    assert pol.volume(p) == 4 and plain.volume(p) >= 6
    assert pol.choose(None, p, 4) == [10, 40, 70, 90] and make_policy("fixed-k", distinct=True).choose(None, p, 2) == [10, 40]
    from acre_model.errors import InputError

    with pytest.raises(InputError, match="distinct"):
        make_policy("acre", distinct="yes")
    with pytest.raises(InputError, match="distinct"):
        make_policy("random", distinct=True)


def test_library_scores_are_one_softmax_per_row_over_every_document_summed_per_chunk():
    """The library scoring (one padded buffer) equals the rule written plainly: per head, one softmax per
    question row over all documents' tokens (sinks out), each chunk's largest probability per row, summed
    over rows; the best head. Documents of uneven lengths, so short last chunks are covered."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    D, n_rep, T, cs, n_sink = 8, 2, 3, 4, 2
    heads = [(1, 0), (2, 1)]
    docs = [SimpleNamespace(doc_id=f"d{i}", n_tokens=n, chunk_size=cs, index_heads=heads,
                            index_keys=torch.randn(len(heads), n, D), layout=SimpleNamespace(n_sink=n_sink))
            for i, n in enumerate([13, 8, 21])]
    probe = SimpleNamespace(queries={layer: torch.randn(2 * n_rep, T, D) for layer, _ in heads})
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    got = loc.library_chunk_scores(docs, probe, n_rep, D, inv_freq)

    want = [torch.zeros(-(-d.n_tokens // cs)) for d in docs]
    for h, (layer, g) in enumerate(heads):
        q = probe.queries[layer][g * n_rep:(g + 1) * n_rep].reshape(-1, D)
        parts = []
        for d in docs:
            x = loc.shift_queries(q, d.n_tokens - docs[0].n_tokens, inv_freq) @ d.index_keys[h].T / math.sqrt(D)
            x[:, :n_sink] = float("-inf")
            parts.append(x)
        probs = torch.cat(parts, 1).softmax(-1)
        for i, (d, pr) in enumerate(zip(docs, probs.split([d.n_tokens for d in docs], 1))):
            want[i] = torch.maximum(want[i], loc.max_per_chunk(pr, d.n_tokens, cs).sum(0))
    for g_, w in zip(got, want):
        assert g_.shape == w.shape
        torch.testing.assert_close(g_, w, rtol=1e-5, atol=1e-6)


def _no_sinks(doc, probe, n_rep, D, heads, always):
    """Per-token best share with the sinks and recent window left out of the softmax (no other exclusion)."""
    best = torch.zeros(doc.n_tokens)
    for h, (layer, g) in enumerate(heads):
        q = probe.queries[layer][g * n_rep:(g + 1) * n_rep].reshape(-1, D)
        best = torch.maximum(best, (q @ doc.index_keys[h].T / math.sqrt(D)).masked_fill(always, -1e30)
                             .softmax(-1).amax(0))
    best[always] = 0.0
    return best


def test_single_document_scores_read_the_index_best_heads_only():
    """`index_chunk_scores(n_heads=)` is the max rule over the index's first heads (calibration order);
    the policy's `locator_heads` picks them and pass 1 then stops at the last of their layers."""
    from types import SimpleNamespace

    from acre_model.policies import make_policy

    torch.manual_seed(1)
    D, n_rep, T, cs, n = 8, 2, 3, 4, 22
    heads = [(1, 0), (3, 1), (2, 0)]
    always = torch.zeros(n, dtype=torch.bool)
    always[[0, 1, n - 1]] = True
    doc = SimpleNamespace(doc_id="d", n_tokens=n, n_chunks=-(-n // cs), chunk_size=cs, index_heads=heads,
                          index_keys=torch.randn(len(heads), n, D), l1_pos=torch.arange(n), l1_always=always)
    probe = SimpleNamespace(queries={layer: torch.randn(2 * n_rep, T, D) for layer, _ in heads})

    def plain(hs):
        best = torch.zeros(n)
        for h in hs:
            layer, g = heads[h]
            q = probe.queries[layer][g * n_rep:(g + 1) * n_rep].reshape(-1, D)
            best = torch.maximum(best, (q @ doc.index_keys[h].T / math.sqrt(D)).softmax(-1).amax(0))
        best[always] = 0.0
        return loc.max_per_chunk(best, n, cs)

    torch.testing.assert_close(loc.index_chunk_scores(doc, probe, n_rep, D, 1), plain([0]))
    torch.testing.assert_close(loc.index_chunk_scores(doc, probe, n_rep, D, 2), plain([0, 1]))
    torch.testing.assert_close(loc.index_chunk_scores(doc, probe, n_rep, D), plain([0, 1, 2]))
    assert not torch.equal(plain([0]), plain([0, 1, 2]))  # the heads disagree: the slice matters
    # a library of one document is the single-document rule at every index head
    torch.testing.assert_close(loc.library_chunk_scores([doc], probe, n_rep, D)[0], plain([0, 1, 2]))
    assert make_policy("acre").locator_heads == 4
    # the residual locator: excluded tokens (and sinks, recent) leave each row's softmax; the rest share it
    excl = loc.chunk_tokens(doc, [1, 3])
    assert excl.shape == (n,) and excl[4:8].all() and excl[12:16].all() and excl.sum() == 8
    res = loc.index_chunk_scores(doc, probe, n_rep, D, exclude=excl)
    assert float(res[1]) == float(res[3]) == 0.0
    want = torch.zeros(n)
    for layer, g in heads:
        q = probe.queries[layer][g * n_rep:(g + 1) * n_rep].reshape(-1, D)
        logits = (q @ doc.index_keys[heads.index((layer, g))].T / math.sqrt(D)).masked_fill(excl | always, -1e30)
        want = torch.maximum(want, logits.softmax(-1).amax(0))
    want[always] = 0.0
    torch.testing.assert_close(res, loc.max_per_chunk(want, n, cs))
    assert (res[[0, 2, 4, 5]] >= plain([0, 1, 2])[[0, 2, 4, 5]]).all()  # shares only grow when others leave
    torch.testing.assert_close(loc.index_chunk_scores(doc, probe, n_rep, D, exclude=torch.zeros(n, dtype=torch.bool)),
                               loc.max_per_chunk(_no_sinks(doc, probe, n_rep, D, heads, always), n, cs))
    with __import__("pytest").raises(Exception, match="locator_heads"):
        make_policy("acre", locator_heads=-1)


def test_keys_at_one_distance_score_by_content_alone():
    """`locator_distance`: each index key (rotated at its own position j) is turned to position
    n - distance, which equals rotating its pre-RoPE key there; so two chunks with the same pre-RoPE keys
    score alike wherever they stand, while at their own positions they do not."""
    from types import SimpleNamespace

    from acre_model.errors import InputError
    from acre_model.policies import make_policy
    from acre_model.rope import Rope

    torch.manual_seed(2)
    D, n_rep, T, cs, n, dist = 8, 2, 3, 4, 40, 5
    inv_freq = 1.0 / (100 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))  # a fast RoPE: positions matter

    def rotate(x, pos):
        f = torch.outer(pos.double(), inv_freq.double())
        emb = torch.cat([f, f], -1)
        return Rope.apply(x, emb.cos().float(), emb.sin().float())

    raw = torch.randn(1, n, D)
    raw[0, 32:36] = raw[0, 8:12]  # one chunk's pre-RoPE keys twice: chunks 2 and 8
    heads = [(1, 0)]
    always = torch.zeros(n, dtype=torch.bool)
    always[[0, n - 1]] = True
    doc = SimpleNamespace(doc_id="d", n_tokens=n, n_chunks=n // cs, chunk_size=cs, index_heads=heads,
                          index_keys=rotate(raw, torch.arange(n)), l1_pos=torch.arange(n), l1_always=always)
    rope = Rope(SimpleNamespace(head_dim=D, rope_theta=100.0, rope_scaling=None))
    torch.testing.assert_close(rope.inv_freq, inv_freq)
    ropes = [None, rope]
    torch.testing.assert_close(loc.scoring_keys(doc, 1, dist, ropes)[0], rotate(raw[0], torch.full((n,), n - dist)),
                               rtol=1e-4, atol=1e-5)
    # a distance beyond the document: every key turns forwards (the first ones too)
    torch.testing.assert_close(loc.scoring_keys(doc, 1, n + 3, ropes)[0], rotate(raw[0], torch.full((n,), -3)),
                               rtol=1e-4, atol=1e-5)
    probe = SimpleNamespace(queries={1: rotate(torch.randn(2 * n_rep, T, D), n + torch.arange(T))})
    near = loc.index_chunk_scores(doc, probe, n_rep, D, distance=dist, ropes=ropes)
    own = loc.index_chunk_scores(doc, probe, n_rep, D)
    torch.testing.assert_close(near[2], near[8])  # same content, same score
    assert not torch.allclose(own[2], own[8], rtol=1e-3)  # at their own positions they differ
    assert not torch.allclose(near, own)
    with pytest.raises(ValueError, match="RoPE"):
        loc.index_chunk_scores(doc, probe, n_rep, D, distance=dist)
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="locator_distance"):
            make_policy("acre", locator_distance=bad)
    assert make_policy("acre").locator_distance is None
    with pytest.raises(InputError, match="ranks chunks another way"):  # its own locator would ignore it
        make_policy("quest", locator_distance=64)


def test_support_adds_up_the_question_tokens_that_point_at_a_chunk():
    """`locator_score="support"`: a chunk scores the sum over question tokens of each token's best share
    there (over heads and a group's query heads) where it reaches `support_min`; shares below it add
    nothing. Checked against a reference built from the rows' softmax, on a synthetic index."""
    from types import SimpleNamespace

    from acre_model.errors import InputError
    from acre_model.policies import make_policy

    shares = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.0, 0.6], [0.19, 0.19, 0.19]])  # [tokens, chunks]
    tie = loc.SUPPORT_TIE * shares.amax(0)
    torch.testing.assert_close(loc.support_scores(shares, 0.2), torch.tensor([1.4, 0.0, 0.6]) + tie)
    # no token points at chunks 1 and 2 sharply: they keep the max rule's order, below any pointed-at chunk
    spread = torch.tensor([[0.9, 0.15, 0.05], [0.3, 0.1, 0.19]])
    assert loc.support_scores(spread, 0.2).argsort(descending=True).tolist() == [0, 2, 1]
    # a chunk three tokens point at outranks one a single token points at more sharply: max would not
    three = torch.tensor([[0.3, 0.8], [0.3, 0.0], [0.3, 0.0]])
    assert loc.support_scores(three, 0.2).argmax() == 0 and three.amax(0).argmax() == 1

    torch.manual_seed(5)
    D, n_rep, T, cs, n = 8, 2, 4, 4, 24
    heads = [(0, 0), (1, 1)]
    always = torch.zeros(n, dtype=torch.bool)
    always[[0, n - 1]] = True
    doc = SimpleNamespace(doc_id="d", n_tokens=n, n_chunks=n // cs, chunk_size=cs, index_heads=heads,
                          index_keys=torch.randn(2, n, D) * 2, l1_pos=torch.arange(n), l1_always=always)
    probe = SimpleNamespace(queries={0: torch.randn(2 * n_rep, T, D) * 2, 1: torch.randn(2 * n_rep, T, D) * 2})
    per_token = torch.zeros(T, n)
    for h, (layer, g) in enumerate(heads):
        q = probe.queries[layer][g * n_rep:(g + 1) * n_rep]  # [n_rep, T, D]
        per_token = torch.maximum(per_token, (q @ doc.index_keys[h].T / math.sqrt(D)).softmax(-1).amax(0))
    per_token[:, always] = 0.0
    chunk_shares = per_token.view(T, n // cs, cs).amax(-1)
    for th in (0.05, 0.2, 0.5):
        want = (chunk_shares * (chunk_shares >= th)).sum(0) + loc.SUPPORT_TIE * chunk_shares.amax(0)
        torch.testing.assert_close(loc.index_chunk_scores(doc, probe, n_rep, D, score="support", support_min=th), want)
    # "max" is still the largest share of any row (the default)
    torch.testing.assert_close(loc.index_chunk_scores(doc, probe, n_rep, D), chunk_shares.amax(0))
    with pytest.raises(ValueError, match="score"):
        loc.index_chunk_scores(doc, probe, n_rep, D, score="mean")
    for bad in ({"locator_score": "sum"}, {"support_min": 0}, {"support_min": 1.5}, {"support_min": True}):
        with pytest.raises(InputError, match=next(iter(bad))):
            make_policy("acre", **bad)
    assert make_policy("acre").locator_score == "max"
    with pytest.raises(InputError, match="ranks chunks another way"):
        make_policy("infllm", locator_score="support")
