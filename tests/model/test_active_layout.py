"""ActiveLayout on a synthetic document: which entries each layer attends, in which order, at which
positions (exact and focus), token-level selections, and an empty plan. No model, no store."""
from __future__ import annotations

import torch

from acre_model.active_layout import ActiveLayout
from acre_model.doc_state import DocState
from acre_model.plan import Plan

N, C, L, H, D = 20, 4, 2, 1, 2  # 20 tokens in 5 chunks of 4; 2 layers


def make_doc() -> DocState:
    """L1 = sinks 0-1, one representative per chunk (the chunk's second token), recent 18-19.
    Each entry's key holds (layer, position) so that assembled tensors can be checked."""
    pos = torch.tensor([0, 1, 5, 9, 13, 17, 18, 19])
    always = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    keys = torch.stack([torch.stack([torch.full((len(pos),), float(l)), pos.float()], -1)[None]
                        for l in range(L)])  # [L, H, n_l1, D]
    return DocState("d", N, C, keys, -keys, pos, pos // C, always, [], None, None, None)


def chunk_layer(c: int, layer: int) -> torch.Tensor:
    """[2, H, len, D] of chunk c: keys (layer, position), values their negation."""
    p = torch.arange(c * C, min(N, (c + 1) * C)).float()
    k = torch.stack([torch.full_like(p, layer), p], -1)[None]
    return torch.stack([k, -k])


def test_exact_mode_keeps_original_positions_in_document_order():
    doc = make_doc()
    lay = ActiveLayout.build(Plan([2], use_l1=True, mode="exact"), doc, L)
    # L1 entries of chunks other than 2 (13 is chunk 3; 9 is chunk 2 and is replaced by the whole chunk)
    want = torch.tensor([0, 1, 5, 8, 9, 10, 11, 13, 17, 18, 19])
    for layer in range(L):
        assert torch.equal(lay.layers[layer].positions, want)
        k, v, rope = lay.assemble(layer, doc, chunk_layer)
        assert torch.equal(k[0, :, 1], want.float()) and torch.equal(k[0, :, 0], torch.full((11,), float(layer)))
        assert torch.equal(v, -k)
        assert torch.equal(rope, want)
    assert lay.chunks_needed == [2]
    assert lay.n_active == [11, 11] and lay.question_start == N
    assert lay.kv_ratio == 11 / N
    assert torch.equal(lay.question_positions(3), torch.tensor([20, 21, 22]))


def test_focus_mode_renumbers_contiguously_and_the_question_follows():
    doc = make_doc()
    lay = ActiveLayout.build(Plan([0, 4], use_l1=True, mode="focus"), doc, L)
    e = lay.layers[0]
    assert torch.equal(e.positions, torch.tensor([0, 1, 2, 3, 5, 9, 13, 16, 17, 18, 19]))
    assert torch.equal(e.rope_positions, torch.arange(11))
    assert lay.question_start == 11
    k, _, rope = lay.assemble(0, doc, chunk_layer)
    assert torch.equal(k[0, :, 1], e.positions.float()) and torch.equal(rope, torch.arange(11))


def test_without_l1_only_the_refilled_chunks_are_attended():
    doc = make_doc()
    lay = ActiveLayout.build(Plan([1, 3], use_l1=False, mode="exact"), doc, L)
    assert torch.equal(lay.layers[1].positions, torch.tensor([4, 5, 6, 7, 12, 13, 14, 15]))
    assert lay.kv_ratio == 8 / N


def test_a_short_last_chunk_counts_its_real_tokens():
    doc = make_doc()
    doc.n_tokens = 18  # chunk 4 now holds tokens 16-17 only
    doc.l1_pos, doc.l1_chunk = doc.l1_pos[:6], doc.l1_chunk[:6]
    doc.l1_keys, doc.l1_values, doc.l1_always = doc.l1_keys[:, :, :6], doc.l1_values[:, :, :6], doc.l1_always[:6]
    lay = ActiveLayout.build(Plan([4], use_l1=False, mode="exact"), doc, L)
    assert lay.n_active == [2, 2]


def test_token_level_selection_takes_l1_entries_from_l1_and_the_rest_from_their_chunks():
    doc = make_doc()
    tokens = torch.zeros(L, N, dtype=torch.bool)
    tokens[0, [0, 1, 5, 6, 19]] = True  # 0, 1, 5, 19 are in L1; 6 must come from chunk 1
    tokens[1, [0, 12, 14]] = True  # 12 and 14 from chunk 3 (13, the representative, is not picked)
    lay = ActiveLayout.build(Plan([], use_l1=False, tokens=tokens, mode="exact"), doc, L)
    assert torch.equal(lay.layers[0].positions, torch.tensor([0, 1, 5, 6, 19]))
    assert torch.equal(lay.layers[1].positions, torch.tensor([0, 12, 14]))
    assert lay.chunks_needed == [1, 3]
    assert [c for c, _ in lay.layers[0].token_groups] == [1] and [c for c, _ in lay.layers[1].token_groups] == [3]
    for layer in range(L):
        k, v, rope = lay.assemble(layer, doc, chunk_layer)
        assert torch.equal(k[0, :, 1], lay.layers[layer].positions.float())
        assert torch.equal(rope, lay.layers[layer].positions)
    assert lay.n_active == [5, 3] and lay.kv_ratio == 4 / N


def test_token_picks_inside_refilled_chunks_are_not_counted_twice():
    doc = make_doc()
    tokens = torch.zeros(L, N, dtype=torch.bool)
    tokens[:, [4, 5, 6]] = True  # all in chunk 1, which is refilled whole
    lay = ActiveLayout.build(Plan([1], use_l1=False, tokens=tokens, mode="exact"), doc, L)
    assert torch.equal(lay.layers[0].positions, torch.tensor([4, 5, 6, 7]))
    assert lay.chunks_needed == [1]


def test_an_empty_plan_attends_nothing():
    doc = make_doc()
    for mode, q_start in (("exact", N), ("focus", 0)):
        lay = ActiveLayout.build(Plan([], use_l1=False, mode=mode), doc, L)
        assert lay.n_active == [0, 0] and lay.kv_ratio == 0.0 and lay.chunks_needed == []
        assert lay.assemble(0, doc, chunk_layer) is None
        assert lay.question_start == q_start


def test_l1_only_plan_attends_the_whole_attend_set():
    doc = make_doc()
    lay = ActiveLayout.build(Plan([], use_l1=True, mode="exact"), doc, L)
    assert torch.equal(lay.layers[0].positions, doc.l1_pos) and lay.chunks_needed == []
