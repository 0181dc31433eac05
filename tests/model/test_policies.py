"""Every policy's contract, on a tiny random model with the real tokenizer and a real store. The list
is `POLICIES` itself, so a new policy is tested here as soon as it is added."""
from __future__ import annotations

from dataclasses import fields

import pytest

from acre_model.errors import InputError
from acre_model.policies import POLICIES, make_policy, policy_names
from tests.model.tiny import tiny_with_doc

QUESTIONS = ["What colour is the grass?", "Which sentence says the sun is yellow?", "Name every colour."]
NAMES = [p.name for p in POLICIES]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_path):
    eng, store, info = tiny_with_doc(tmp_path_factory.mktemp("policies"), default_model_path, seed=7)
    yield eng, store, info
    store.close()


def test_the_policy_list_is_explicit_and_unique():
    assert policy_names() == NAMES and len(set(NAMES)) == len(NAMES)
    assert {"acre", "acre-entropy", "acre-l1", "full", "streaming", "h2o", "snapkv", "l1-only", "random", "fixed-k",
            "quest", "infllm"} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_plan_is_in_range_and_the_reported_kv_ratio_is_what_is_attended(tiny, name):
    eng, store, info = tiny
    for q in QUESTIONS:
        p = eng.prepare(info.doc_id, q, name, store=store)
        chunks = p.plan.chunks
        assert chunks == sorted(set(chunks)) and all(0 <= c < info.n_chunks for c in chunks)
        if p.plan.tokens is not None:
            assert tuple(p.plan.tokens.shape) == (eng.cfg.num_hidden_layers, info.n_tokens)
        # entries actually in the KV cache: every layer holds its document entries, then the question
        attended = [p.cache.view(layer)[0].shape[1] - p.n_question for layer in range(eng.cfg.num_hidden_layers)]
        assert attended == p.layout.n_active
        assert p.layout.kv_ratio == pytest.approx(sum(attended) / len(attended) / info.n_tokens)
        a = eng.ask(info.doc_id, q, name, store=store, max_new_tokens=2)
        assert a.policy == name and a.kv_ratio == pytest.approx(p.layout.kv_ratio)
        assert a.refilled_chunks == chunks and a.n_active == max(attended)


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_knob_is_an_error_naming_the_policy_and_its_knobs(tiny, name):
    eng, store, info = tiny
    with pytest.raises(InputError) as e:
        make_policy(name, colour="blue")
    msg = str(e.value)
    assert repr(name) in msg and "colour" in msg
    for f in fields(make_policy(name)):
        assert f.name in msg
    with pytest.raises(InputError, match="colour"):
        eng.ask(info.doc_id, QUESTIONS[0], name, store=store, colour="blue")


@pytest.mark.parametrize("name, knobs", [
    ("acre", {"k_min": 0}), ("acre", {"k_min": 3, "k_max": 2}), ("acre", {"neighbors": -1}),
    ("acre", {"mode": "wide"}), ("acre", {"p_power": 0}), ("acre-l1", {"k_max": 0}), ("fixed-k", {"fixed_k": 0}),
    ("random", {"k_min": 2.5}), ("l1-only", {"mode": "sideways"}), ("streaming", {"budget": 0}),
    ("h2o", {"budget": 1.5}), ("snapkv", {"budget": -0.1}), ("acre", {"k_max": "3"}), ("quest", {"fixed_k": 0}),
    ("infllm", {"neighbors": -1}), ("quest", {"mode": "wide"}),
    ("acre", {"coverage": 0}), ("acre", {"coverage": 1.5}), ("acre", {"kv_budget": 2}),
    ("acre-entropy", {"kv_budget": -0.5}), ("acre-entropy", {"k_min": 0}),
])
def test_bad_knob_values_are_refused_by_their_policy(name, knobs):
    with pytest.raises(InputError, match=f"policy {name!r}"):
        make_policy(name, **knobs)


def test_knobs_a_policy_does_not_take_are_refused():
    with pytest.raises(InputError, match="budget"):
        make_policy("acre", budget=0.2)
    with pytest.raises(InputError, match="k_max"):
        make_policy("full", k_max=3)
    with pytest.raises(InputError, match="unknown policy 'nope'"):
        make_policy("nope")


def test_random_spends_the_same_k_as_acre(tiny):
    eng, store, info = tiny
    differ = 0
    for q in QUESTIONS:
        for knobs in ({}, {"k_min": 2, "k_max": 5, "neighbors": 0}):
            a = eng.prepare(info.doc_id, q, "acre", store=store, **knobs).plan
            r = eng.prepare(info.doc_id, q, "random", store=store, **knobs).plan
            assert r.k == a.k and r.entropy == pytest.approx(a.entropy)
            if knobs.get("neighbors") == 0:
                assert len(r.chunks) == len(a.chunks) == a.k
            differ += r.chunks != a.chunks
    assert differ  # random is not acre's choice under another name


def test_random_is_reproducible_and_moves_with_its_seed(tiny):
    eng, store, info = tiny
    plans = [eng.prepare(info.doc_id, QUESTIONS[2], "random", store=store, seed=s, neighbors=0).plan.chunks
             for s in (0, 0, 1, 2, 3)]
    assert plans[0] == plans[1] and len({tuple(p) for p in plans}) > 1


def test_token_budget_baselines_spend_their_budget_and_keep_the_sinks(tiny):
    eng, store, info = tiny
    n_sink = eng.load_document(info.doc_id, store).layout.n_sink
    for name in ("streaming", "h2o", "snapkv"):
        p = eng.prepare(info.doc_id, QUESTIONS[0], name, store=store, budget=0.4)
        kept = p.plan.tokens.sum(-1)
        assert (kept == round(0.4 * info.n_tokens)).all()
        assert p.plan.tokens[:, :n_sink].all()


def test_locator_distance_plans_on_keys_at_one_distance_and_answers_with_reselection(tiny):
    """`locator_distance` reaches the locator through the engine: the plan's p is the index scored with the
    keys turned to that distance (not their own positions), and re-selection runs with it."""
    import torch

    from acre_model import locator
    from acre_model.policies import PlanContext

    eng, store, info = tiny
    doc = eng.load_document(info.doc_id, store)
    q = QUESTIONS[1]
    p = eng.prepare(info.doc_id, q, "acre", store=store, locator_distance=16).plan.p
    pol = make_policy("acre", locator_distance=16)
    ctx = PlanContext(eng.model, doc, torch.tensor(eng.tokenizer.question_ids(q, "")))
    probe, n_heads = pol.index_probe(ctx)
    want = locator.index_chunk_scores(doc, probe, eng.cfg.n_rep, eng.cfg.head_dim, n_heads, distance=16,
                                      ropes=eng.model.ropes)
    torch.testing.assert_close(p, locator.to_distribution(want, pol.p_power))
    own = eng.prepare(info.doc_id, q, "acre", store=store).plan.p
    assert not torch.allclose(p, own)  # the distance changed the scores
    a = eng.ask(info.doc_id, q, "acre", store=store, locator_distance=16, reselect=2, max_new_tokens=4)
    assert a.policy == "acre" and a.answer is not None


def test_support_scoring_reaches_the_plan_through_the_engine(tiny):
    """`locator_score="support"` (with `support_min`) reaches the locator through the engine: the plan's p is
    the index's support scores, and the ask answers with them (fixed-k too: the same ranking). The tiny random
    model's shares are ~0.003, so the threshold is set below them: every token's share then counts."""
    import torch

    from acre_model import locator
    from acre_model.policies import PlanContext

    eng, store, info = tiny
    doc = eng.load_document(info.doc_id, store)
    q = QUESTIONS[1]
    p = eng.prepare(info.doc_id, q, "acre", store=store, locator_score="support", support_min=0.001).plan.p
    pol = make_policy("acre", locator_score="support", support_min=0.001)
    ctx = PlanContext(eng.model, doc, torch.tensor(eng.tokenizer.question_ids(q, "")))
    probe, n_heads = pol.index_probe(ctx)
    want = locator.index_chunk_scores(doc, probe, eng.cfg.n_rep, eng.cfg.head_dim, n_heads, score="support",
                                      support_min=0.001)
    torch.testing.assert_close(p, locator.to_distribution(want, pol.p_power))
    assert not torch.allclose(p, eng.prepare(info.doc_id, q, "acre", store=store).plan.p)
    a = eng.ask(info.doc_id, q, "fixed-k", store=store, locator_score="support", support_min=0.001, max_new_tokens=4)
    assert a.policy == "fixed-k" and len(a.refilled_chunks) > 0
