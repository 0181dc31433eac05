"""The peers `quest` and `infllm`: their ingest-time metadata checked against brute force on small random
tensors, and on the real model the KV they report against what they attend, a needle, and the clear
error for a document stored without their metadata."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from acre_model.errors import DocumentError
from acre_model.ingest import infllm_representatives, page_index, quest_bounds
from acre_model.policies.infllm import relevance
from acre_model.policies.quest import upper_bound


def _keys(n: int, seed: int, L: int = 2, hkv: int = 2, d: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(hkv, n, d, generator=g) * 3 for _ in range(L)]


@pytest.mark.parametrize("n, chunk, page", [(100, 32, 16), (75, 24, 16), (40, 32, 32)])
def test_pages_stay_inside_their_chunk(n, chunk, page):
    idx = page_index(n, chunk, page)
    per = -(-chunk // page)
    assert (idx // per == torch.arange(n) // chunk).all()  # a page's chunk is its tokens' chunk
    assert (idx.diff() >= 0).all() and (idx.bincount() <= page).all() and (idx.bincount() > 0).all()


@pytest.mark.parametrize("n, chunk, page", [(100, 32, 16), (75, 24, 16)])
def test_quest_bound_is_above_every_key_of_the_page_and_is_reached(n, chunk, page):
    keys = _keys(n, seed=n)
    lo, hi = (torch.from_numpy(a) for a in quest_bounds(SimpleNamespace(n_tokens=n, keys_rot=keys), chunk, page))
    idx = page_index(n, chunk, page)
    q = torch.randn(2 * 3, 5, 8, generator=torch.Generator().manual_seed(1))  # Hq = 2 KV heads x 3, T = 5
    for layer, k in enumerate(keys):
        # the float16 bounds contain every key of their page (rounded outwards)
        assert (lo[layer][:, idx].float() <= k).all() and (hi[layer][:, idx].float() >= k).all()
        ub = upper_bound(q, lo[layer], hi[layer], n_rep=3)  # [Hq, T, P]
        logits = q @ k.repeat_interleave(3, 0).transpose(1, 2)  # [Hq, T, n]
        assert (ub[..., idx] >= logits - 1e-4).all()
        # the bound is the largest q.k over the box: the box's corner that follows q's signs reaches it
        corner = torch.where(q[..., None, :] > 0, hi[layer].float().repeat_interleave(3, 0)[:, None],
                             lo[layer].float().repeat_interleave(3, 0)[:, None])  # [Hq, T, P, D]
        assert torch.allclose((q[..., None, :] * corner).sum(-1), ub, atol=1e-4)
    # the bound of a one-token page is that token's q.k (up to float16 rounding)
    one = quest_bounds(SimpleNamespace(n_tokens=n, keys_rot=keys), chunk, 1)
    ub1 = upper_bound(q, torch.from_numpy(one[0][0]), torch.from_numpy(one[1][0]), n_rep=3)
    exact = q @ keys[0].repeat_interleave(3, 0).transpose(1, 2)
    assert (ub1 >= exact - 1e-4).all() and torch.allclose(ub1, exact, atol=0.1)


def test_infllm_representatives_are_the_tokens_the_next_window_attends_most():
    n, C, r = 70, 16, 2
    keys = _keys(n, seed=5)
    g = torch.Generator().manual_seed(6)
    gq = [torch.randn(2, n, 8, generator=g) for _ in keys]  # each KV head's query heads, summed
    rep_k, rep_pos = infllm_representatives(SimpleNamespace(n_tokens=n, keys_rot=keys, group_queries=gq), C, r)
    assert rep_k.shape == (2, 2, 5, r, 8) and rep_pos.shape == (2, 2, 5, r)
    for layer in range(2):
        for h in range(2):
            for c in range(5):
                best = []
                for m in range(c * C, min(n, (c + 1) * C)):
                    window = range(m + 1, min(n - 1, m + C) + 1)
                    s = sum(float(gq[layer][h, j] @ keys[layer][h, m]) for j in window) / max(1, len(window))
                    best.append((s if len(window) else -math.inf, m))
                want = [m for _, m in sorted(best, reverse=True)[:r]]
                assert sorted(rep_pos[layer, h, c].tolist()) == sorted(want)
                got = torch.from_numpy(rep_k[layer, h, c]).float()
                assert torch.allclose(got, keys[layer][h, rep_pos[layer, h, c]], atol=1e-2)
    # relevance is the mean q.k over query heads, question tokens and representatives
    q = torch.randn(6, 4, 8, generator=g)
    rel = relevance(q, torch.from_numpy(rep_k[0]))
    brute = torch.stack([torch.einsum("htd,grd->", q.view(2, 3, 4, 8)[gi], torch.from_numpy(rep_k[0][gi:gi + 1, c])
                                      .float()) for gi in range(2) for c in range(5)]).view(2, 5).sum(0) / (3 * 4 * 2 * r)
    assert torch.allclose(rel, brute, atol=1e-4)


@pytest.fixture(scope="module")
def needle(engine, tmp_path_factory):
    from acre_model.synth import make_needle_doc
    from acre_store import EmbeddedStore

    store = EmbeddedStore(str(tmp_path_factory.mktemp("peers")))
    d = make_needle_doc(engine.tokenizer.encode, 1100, 0.4, seed=2024)
    info = engine.ingest(d.text, store=store)
    yield d, info, store
    store.close()


@pytest.mark.parametrize("name", ["quest", "infllm"])
def test_reported_kv_ratio_is_the_entries_attended(engine, needle, name):
    """At the default (fixed_k = 3 with neighbours, fixed-k's KV): what every layer's cache holds is the L1
    entries of the chunks not refilled plus every token of the refilled ones, and that is the KV reported."""
    d, info, store = needle
    doc = engine.load_document(info.doc_id, store)
    L = engine.cfg.num_hidden_layers
    p = engine.prepare(info.doc_id, d.question, name, answer_prefix=d.answer_prefix, store=store)
    chunks = p.plan.chunks
    assert p.plan.k == 3 and 3 <= len(chunks) <= 9 and chunks == sorted(set(chunks))
    kept_l1 = int((~torch.isin(doc.l1_chunk.cpu(), torch.tensor(chunks))).sum())
    want = kept_l1 + sum(doc.chunk_len(c) for c in chunks)
    attended = [p.cache.view(layer)[0].shape[1] - p.n_question for layer in range(L)]
    assert attended == [want] * L and p.layout.kv_ratio == pytest.approx(want / info.n_tokens)
    # the Answer's kv_ratio is the layout's (tests/model/test_policies.py checks that for every policy)


@pytest.mark.parametrize("name", ["quest", "infllm"])
def test_a_needle_is_answered_when_its_ranking_reaches_it(engine, needle, name):
    """Quality floor: the needle's chunk ranks in the better half of the chunks, and refilling the chunks
    down to it answers the question (the policy's plan reaches the answer through the engine)."""
    d, info, store = needle
    doc = engine.load_document(info.doc_id, store)
    need = doc.chunks_of(engine.tokenizer.document_token_span(d.text, d.needle_char_span))
    p = engine.prepare(info.doc_id, d.question, name, answer_prefix=d.answer_prefix, store=store).plan.p
    rank = min(p.argsort(descending=True).tolist().index(c) for c in need)
    assert rank < doc.n_chunks // 2
    a = engine.ask(info.doc_id, d.question, name, answer_prefix=d.answer_prefix, store=store, max_new_tokens=12,
                   fixed_k=rank + 1)
    assert set(need) & set(a.refilled_chunks) and d.answer in a.answer, (a.answer, rank)


def test_a_document_stored_without_the_peers_metadata_is_refused_clearly(engine, needle, tmp_path):
    from dataclasses import replace

    from acre_model.doc_state import LayoutConfig
    from acre_store import EmbeddedStore

    d, info, _ = needle
    with EmbeddedStore(str(tmp_path / "s")) as store:
        old = engine.ingest(d.text, store=store, layout=replace(LayoutConfig(), quest_page=0, infllm_reps=0))
        assert old.doc_id != info.doc_id  # the layout is in the content address: a re-ingest is a new document
        parts = store.get_l1(old.doc_id)
        assert not {"quest_kmin", "quest_kmax", "infllm_keys", "infllm_pos"} & set(parts)
        for name, what in (("quest", "Quest key bounds"), ("infllm", "InfLLM representatives")):
            with pytest.raises(DocumentError, match=f"no {what}.*ingest its text again"):
                engine.ask(old.doc_id, d.question, name, store=store, max_new_tokens=1)
        assert engine.ask(old.doc_id, d.question, "acre", store=store, max_new_tokens=1).policy == "acre"
