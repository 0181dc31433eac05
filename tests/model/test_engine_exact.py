"""Exactness of the bi-layer cache on a tiny random model with the real tokenizer and a real store.

`full` on a cached document equals a plain forward of document + question; `acre` refilling every chunk
in exact mode equals `full`; positions are kept (exact) or renumbered in document order (focus).
"""
from __future__ import annotations

import pytest
import torch

from acre_model.engine import Engine
from tests.model.tiny import DOC, make_tiny_folder

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_path):
    from acre_store import EmbeddedStore

    root = tmp_path_factory.mktemp("tiny-engine")
    folder = make_tiny_folder(root / "model", default_model_path, seed=11)
    eng = Engine.from_pretrained(str(folder), device="cpu")
    store = EmbeddedStore(str(root / "store"))
    yield eng, store
    store.close()


def plain_logits(eng, doc: str, question: str, prefix: str = "") -> torch.Tensor:
    parts = eng.tokenizer.prompt_ids(doc, question, prefix)
    ids = torch.tensor(parts.prefix + parts.suffix)
    return eng.model.prefill(ids, eng.model.new_cache())


def test_full_policy_equals_plain_forward(tiny):
    eng, store = tiny
    info = eng.ingest(DOC, store=store)
    assert info.n_chunks > 3
    q = "What colour is the sea?"
    got = eng.first_token_logits(info.doc_id, q, policy="full", answer_prefix="The sea is", store=store)
    ref = plain_logits(eng, DOC, q, "The sea is")
    assert (got - ref).abs().max().item() < 1e-4


def test_acre_with_all_chunks_exact_equals_full(tiny):
    eng, store = tiny
    info = eng.ingest(DOC, store=store)
    n = info.n_chunks
    a = eng.first_token_logits(info.doc_id, "Which sentence mentions grass?", policy="acre", store=store,
                               k_min=n, k_max=n, neighbors=0, mode="exact")
    b = eng.first_token_logits(info.doc_id, "Which sentence mentions grass?", policy="full", store=store)
    assert (a - b).abs().max().item() < 1e-4


def test_reingest_is_a_noop_with_the_same_id(tiny):
    eng, store = tiny
    a = eng.ingest(DOC, store=store)
    b = eng.ingest(DOC, store=store)
    assert a.doc_id == b.doc_id and b.existed
    assert len([m for m in store.list() if m.doc_id == a.doc_id]) == 1


def _positions_after(eng, store, doc_id, mode):
    p = eng.prepare(doc_id, "Is the sun yellow?", "acre", "", store, 1, mode=mode, k_min=2, k_max=2, neighbors=0)
    return p.plan, p, p.doc


def test_exact_mode_keeps_positions_focus_renumbers(tiny):
    eng, store = tiny
    info = eng.ingest(DOC, store=store)
    plan, rf, doc = _positions_after(eng, store, info.doc_id, "exact")
    pos = rf.cache.view(0)[2]
    n_doc = rf.layout.n_active[0]
    doc_pos = pos[:n_doc]
    assert torch.all(doc_pos[1:] > doc_pos[:-1])  # document order
    C = doc.chunk_size
    for c in plan.chunks:  # every token of a refilled chunk at its original position
        span = torch.arange(c * C, min(doc.n_tokens, (c + 1) * C))
        assert torch.isin(span, doc_pos).all()
    assert int(pos[n_doc]) == doc.n_tokens  # the question continues after the document
    plan_f, rf_f, _ = _positions_after(eng, store, info.doc_id, "focus")
    assert plan_f.chunks == plan.chunks
    pos_f = rf_f.cache.view(0)[2]
    assert torch.equal(pos_f[: rf_f.layout.n_active[0]], torch.arange(rf_f.layout.n_active[0]))
    assert int(pos_f[rf_f.layout.n_active[0]]) == rf_f.layout.n_active[0]


def test_questions_do_not_change_the_stored_document(tiny):
    eng, store = tiny
    info = eng.ingest(DOC, store=store)
    before = {k: v.copy() for k, v in store.get_l1(info.doc_id).items()}
    q1 = eng.ask(info.doc_id, "What colour is the sky?", store=store, max_new_tokens=5)
    eng.ask(info.doc_id, "Name a colour.", policy="full", store=store, max_new_tokens=5)
    q1_again = eng.ask(info.doc_id, "What colour is the sky?", store=store, max_new_tokens=5)
    assert q1.answer == q1_again.answer and q1.refilled_chunks == q1_again.refilled_chunks
    after = store.get_l1(info.doc_id)
    assert all((before[k] == after[k]).all() for k in before)


def test_model_mismatch_is_refused(tiny, tmp_path, default_model_path):
    from acre_model.errors import DocumentError

    eng, store = tiny
    info = eng.ingest(DOC, store=store)
    other = Engine.from_pretrained(str(make_tiny_folder(tmp_path / "other", default_model_path, seed=12)),
                                   device="cpu")
    with pytest.raises(DocumentError, match="another model"):
        other.ask(info.doc_id, "What colour is the sky?", store=store)


@pytest.mark.parametrize("policy", ["acre", "acre-l1", "full", "streaming", "h2o", "snapkv", "l1-only",
                                    "random", "fixed-k", "quest", "infllm"])
def test_every_policy_answers_and_reports_its_kv_ratio(tiny, policy):
    eng, store = tiny
    info = eng.ingest(DOC, store=store)
    knobs = {"budget": 0.3} if policy in ("streaming", "h2o", "snapkv") else {}  # a knob only its policies take
    a = eng.ask(info.doc_id, "What colour is the grass?", policy=policy, store=store, max_new_tokens=3, **knobs)
    assert a.policy == policy
    assert 0 < a.kv_ratio <= 1.0
    if policy == "full":
        assert a.kv_ratio == 1.0
    if policy in ("streaming", "h2o", "snapkv"):
        assert abs(a.kv_ratio - 0.3) < 0.02
    if policy == "l1-only":
        assert a.refilled_chunks == [] and a.kv_ratio == info.n_l1 / info.n_tokens
