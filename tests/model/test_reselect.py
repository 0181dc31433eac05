"""Re-selection during decoding (`Engine.ask(..., reselect=N)`), on a tiny random model with the real
tokenizer and a real store: off changes nothing, a locator that finds nothing new changes nothing, the
residual locator's chunks join (only after N tokens, best unattended chunk first), a budget caps them,
and the batching scheduler re-selects as `Engine.ask` does."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from acre_model.errors import InputError
from acre_model.policies import AcrePolicy
from tests.model.tiny import DOC, tiny_with_doc

Q = "Which sentence says the sun is yellow?"
N_NEW = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_path):
    eng, store, info = tiny_with_doc(tmp_path_factory.mktemp("reselect"), default_model_path, seed=11)
    yield eng, store, info
    store.close()


@dataclass
class NothingNew(AcrePolicy):
    """acre whose re-selection runs (and is counted) but names only chunks the cache already holds."""

    def locate_more(self, ctx, have, cap):
        self.calls = getattr(self, "calls", 0) + 1
        assert len(ctx.q_ids) > self.n_q  # re-selection queries with the answer so far
        return sorted(have)


def test_reselect_off_is_todays_answer(tiny):
    eng, store, info = tiny
    a = eng.ask(info.doc_id, Q, store=store, max_new_tokens=N_NEW)
    b = eng.ask(info.doc_id, Q, store=store, max_new_tokens=N_NEW, reselect=0)
    timing = {"ttft_s": 0, "total_s": 0, "decode_ms_per_token": 0, "fetch_s": 0, "fetch_wait_s": 0,
              "fetched_bytes": 0}  # the second ask finds the chunks in the device cache
    assert a.to_dict() | timing == b.to_dict() | timing
    assert b.reselected_chunks == []


def test_a_locator_that_finds_nothing_new_leaves_the_answer_unchanged(tiny):
    eng, store, info = tiny
    base = eng.ask(info.doc_id, Q, store=store, max_new_tokens=N_NEW, k_max=2)
    pol = NothingNew(k_max=2)
    pol.n_q = len(eng.tokenizer.question_ids(Q))
    a = eng.ask(info.doc_id, Q, pol, store=store, max_new_tokens=N_NEW, reselect=2)
    assert a.n_new_tokens == base.n_new_tokens == N_NEW  # a random model never stops early
    assert pol.calls == (N_NEW - 1) // 2  # re-selection did run, every 2 tokens
    assert a.answer == base.answer and a.refilled_chunks == base.refilled_chunks
    assert a.kv_ratio == base.kv_ratio and a.reselected_chunks == []


def test_new_chunks_join_after_n_tokens_and_a_budget_caps_them(tiny):
    """With `reselect_min` near 0 every unattended chunk the residual locator sees qualifies: k_max of them
    join at each re-selection, none of them already refilled; a budget of the plan's own size stops them."""
    eng, store, info = tiny
    n = 4
    base = eng.ask(info.doc_id, Q, store=store, max_new_tokens=N_NEW, k_max=2, neighbors=0)
    a = eng.ask(info.doc_id, Q, store=store, max_new_tokens=N_NEW, k_max=2, neighbors=0, reselect_min=1e-9,
                reselect=n)
    assert len(a.reselected_chunks) == 2 * ((N_NEW - 1) // n)  # k_max chunks at each re-selection
    assert not set(a.reselected_chunks) & set(base.refilled_chunks)
    assert a.refilled_chunks == sorted(set(base.refilled_chunks) | set(a.reselected_chunks))
    assert a.kv_ratio > base.kv_ratio and a.fetched_bytes >= base.fetched_bytes
    # the first n tokens come before any re-selection: they are the plain answer's; later ones need not be
    first = eng.ask(info.doc_id, Q, store=store, max_new_tokens=n, k_max=2, neighbors=0).answer
    assert first and a.answer.startswith(first) and base.answer.startswith(first)
    # a budget of the plan's own size leaves no room: nothing joins
    cap = len(base.refilled_chunks) / info.n_chunks
    b = eng.ask(info.doc_id, Q, store=store, max_new_tokens=N_NEW, k_max=2, neighbors=0, reselect_min=1e-9,
                kv_budget=cap, reselect=n)
    assert b.reselected_chunks == [] and b.answer == base.answer
    # a share no softmax row reaches on this model: nothing joins either
    c = eng.ask(info.doc_id, Q, store=store, max_new_tokens=N_NEW, k_max=2, neighbors=0, reselect_min=1.0,
                reselect=n)
    assert c.reselected_chunks == [] and c.answer == base.answer


def test_residual_locator_takes_the_best_unattended_chunk_first(tiny):
    """`locate_more` ranks by the residual locator: its first pick is the best chunk of
    `index_chunk_scores(exclude=attended)`, and each pick is left out before the next."""
    import torch
    from acre_model import locator
    from acre_model.pass1 import run_pass1
    from acre_model.policies.base import PlanContext

    eng, store, info = tiny
    doc = eng.load_document(info.doc_id, store)
    ids = torch.tensor(eng.tokenizer.question_ids(Q))
    pol = AcrePolicy(k_max=3, neighbors=0, reselect_min=1e-9)
    have = {0, 1}
    got = pol.locate_more(PlanContext(eng.model, doc, ids), have, doc.n_chunks)
    assert len(got) == 3 and not set(got) & have
    layers = sorted({layer for layer, _ in doc.index_heads[:pol.locator_heads]})
    probe = run_pass1(eng.model, doc, ids, layers, want_queries=True, want_probs=False)
    cfg = eng.model.cfg
    s = locator.index_chunk_scores(doc, probe, cfg.n_rep, cfg.head_dim, pol.locator_heads,
                                   exclude=locator.chunk_tokens(doc, have))
    assert float(s[0]) == float(s[1]) == 0.0 and int(s.argmax()) in got
    assert AcrePolicy(k_max=1, neighbors=0, reselect_min=1e-9).locate_more(
        PlanContext(eng.model, doc, ids), have, doc.n_chunks) == [int(s.argmax())]


def check_incremental_pass1(eng, doc, q: str) -> None:
    """`extend_pass1` run in three steps (the question and 3 answer tokens, then 4 more, then 4 more) records
    the queries a whole pass 1 over all of them records, reusing one cache; other layers start anew."""
    import torch
    from acre_model.pass1 import extend_pass1, run_pass1

    q_ids = torch.tensor(eng.tokenizer.question_ids(q))
    ids = torch.cat([q_ids, torch.randint(100, 1000, (11,), generator=torch.Generator().manual_seed(3))])
    layers = AcrePolicy().index_layers(doc)
    n = len(q_ids)
    s0 = extend_pass1(eng.model, doc, ids[:n + 3], layers, None)
    n0 = s0.cache.length(max(layers))
    s1 = extend_pass1(eng.model, doc, ids[:n + 7], layers, s0)
    s2 = extend_pass1(eng.model, doc, ids, layers, s1)
    assert s2.cache is s0.cache and s2.n == len(ids) and extend_pass1(eng.model, doc, ids, layers, s2) is s2
    assert s2.cache.length(max(layers)) == n0 + 8  # the 8 new tokens only
    whole = run_pass1(eng.model, doc, ids, list(layers), want_queries=True, want_probs=False)
    got = s2.probe()
    for layer in layers:
        assert got.queries[layer].shape == whole.queries[layer].shape
        torch.testing.assert_close(got.queries[layer], whole.queries[layer], rtol=1e-4, atol=1e-5)
    other = extend_pass1(eng.model, doc, ids, (0,) if layers != (0,) else (1,), s2)  # a pass 1 of its own
    assert other.cache is not s2.cache and other.n == len(ids)


def test_re_selections_pass_1_runs_only_the_new_answer_tokens(tiny):
    eng, store, info = tiny
    check_incremental_pass1(eng, eng.load_document(info.doc_id, store), Q)


def test_reselect_is_refused_where_it_cannot_work(tiny):
    eng, store, info = tiny
    with pytest.raises(InputError, match="reselect"):
        eng.ask(info.doc_id, Q, store=store, reselect=-1)
    with pytest.raises(InputError, match="chunk policy"):
        eng.ask(info.doc_id, Q, "streaming", store=store, reselect=4)
    with pytest.raises(InputError, match="not a policy knob"):
        eng.prepare(info.doc_id, Q, store=store, reselect=4)  # the scheduler's path


def test_acre_ask_reselect_on_the_command_line(tiny, tmp_path):
    import json

    from tests.helpers import assert_clean_error, run_acre

    eng, _, _ = tiny
    env = {"ACRE_HOME": str(tmp_path / "home")}
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    p = run_acre("ingest", str(doc), "--model", str(eng.path), "--json", env_extra=env)
    assert p.returncode == 0, p.stderr
    doc_id = json.loads(p.stdout)["doc_id"]
    p = run_acre("ask", doc_id, Q, "--model", str(eng.path), "--json", "--max-new-tokens", "6", "--reselect", "2",
                 "--kv-budget", "0.5", "--k-max", "1", "--neighbors", "0", "--reselect-min", "1e-9",
                 env_extra=env)
    assert p.returncode == 0, p.stderr
    a = json.loads(p.stdout)
    assert a["n_new_tokens"] >= 3 and a["reselected_chunks"] and a["kv_ratio"] <= 0.5 + 1e-9
    p = run_acre("ask", doc_id, Q, "--model", str(eng.path), "--max-new-tokens", "6", "--reselect", "2",
                 "--kv-budget", "0.5", "--k-max", "1", "--neighbors", "0", "--reselect-min", "1e-9", env_extra=env)
    assert p.returncode == 0 and p.stdout.strip() == a["answer"], p.stderr
    assert f"{len(a['reselected_chunks'])} joined while decoding" in p.stderr, p.stderr  # the summary line says so
    # --questions (the batching scheduler) re-selects too: the same answer as the single ask
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"question": Q}) + "\n" + json.dumps({"question": Q, "reselect": 0}) + "\n")
    p = run_acre("ask", doc_id, "--questions", str(qs), "--model", str(eng.path), "--max-new-tokens", "6",
                 "--reselect", "2", "--kv-budget", "0.5", "--k-max", "1", "--neighbors", "0", "--reselect-min", "1e-9",
                 env_extra=env)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert rows[0]["answer"] == a["answer"] and rows[0]["reselected_chunks"] == a["reselected_chunks"]
    assert rows[1]["reselected_chunks"] == []  # a line's own "reselect" wins over the command line's
    assert_clean_error(run_acre("ask", doc_id, Q, "--model", str(eng.path), "--policy", "streaming",
                                "--reselect", "2", env_extra=env), "chunk policy")


def test_the_scheduler_re_selects_as_engine_ask_does(tiny):
    """Questions decoded together by the scheduler, with and without re-selection, each equal to its
    `Engine.ask` (answer, refilled and re-selected chunks); a question that cannot re-select fails alone."""
    from acre_model.scheduler import AskRequest, Scheduler

    eng, store, info = tiny
    knobs = {"k_max": 2, "neighbors": 0, "reselect_min": 1e-9}
    asks = [(Q, knobs, 3), (Q, knobs, 0), ("Which sentence mentions the sea?", knobs, 2)]
    sched = Scheduler(eng, max_batch=4)
    try:
        streams = [sched.submit(AskRequest(info.doc_id, q, knobs=k, max_new_tokens=N_NEW, store=store, reselect=n))
                   for q, k, n in asks]
        bad = sched.submit(AskRequest(info.doc_id, Q, policy="streaming", store=store, reselect=2))
        with pytest.raises(InputError, match="reselect"):
            sched.submit(AskRequest(info.doc_id, Q, store=store, reselect=-1))
        got = [s.result(timeout=120) for s in streams]
        with pytest.raises(InputError, match="chunk policy"):
            bad.result(timeout=120)
    finally:
        sched.close()
    for (q, k, n), a in zip(asks, got):
        want = eng.ask(info.doc_id, q, store=store, max_new_tokens=N_NEW, reselect=n, **k)
        assert (a.answer, a.refilled_chunks, a.reselected_chunks, a.kv_ratio) == \
            (want.answer, want.refilled_chunks, want.reselected_chunks, want.kv_ratio)
        assert bool(a.reselected_chunks) == bool(n)


def test_residual_completion_of_the_first_plan(tiny):
    """`complete=True` adds, before the first token, what the residual locator finds beyond the volume
    rule's chunks (at most k_max, within the budget); with a share no row reaches it adds nothing."""
    eng, store, info = tiny
    base = eng.ask(info.doc_id, Q, store=store, max_new_tokens=2, k_max=2, neighbors=0)
    a = eng.ask(info.doc_id, Q, store=store, max_new_tokens=2, k_max=2, neighbors=0, complete=True,
                reselect_min=1e-9)
    assert set(base.refilled_chunks) < set(a.refilled_chunks)
    assert len(a.refilled_chunks) == len(base.refilled_chunks) + 2 and a.reselected_chunks == []
    assert a.kv_ratio > base.kv_ratio
    b = eng.ask(info.doc_id, Q, store=store, max_new_tokens=2, k_max=2, neighbors=0, complete=True,
                reselect_min=1.0)
    assert b.refilled_chunks == base.refilled_chunks and b.answer == base.answer
    cap = len(base.refilled_chunks) / info.n_chunks
    c = eng.ask(info.doc_id, Q, store=store, max_new_tokens=2, k_max=2, neighbors=0, complete=True,
                reselect_min=1e-9, kv_budget=cap)
    assert c.refilled_chunks == base.refilled_chunks
    with pytest.raises(InputError, match="complete"):
        eng.ask(info.doc_id, Q, store=store, complete="yes")
    # the completion reads the plan's own pass 1: one probe per question
    import torch
    from acre_model.policies.base import PlanContext

    ctx = PlanContext(eng.model, eng.load_document(info.doc_id, store), torch.tensor(eng.tokenizer.question_ids(Q)))
    plan = AcrePolicy(k_max=2, neighbors=0, complete=True, reselect_min=1e-9).plan(ctx)
    assert len(ctx.probes) == 1 and len(plan.chunks) == len(base.refilled_chunks) + 2


def test_a_question_cancelled_while_it_re_selects_leaves_and_the_scheduler_goes_on(tiny):
    """With `reselect=1` a question is out of the batch re-selecting before nearly every step: cancelled
    after its first text, it ends without an answer, gives its slot back, and the next question is answered."""
    from acre_model.scheduler import AskRequest, Cancelled, Scheduler

    eng, store, info = tiny
    knobs = {"k_max": 1, "neighbors": 0, "reselect_min": 1e-9}
    sched = Scheduler(eng, max_batch=1)
    try:
        s = sched.submit(AskRequest(info.doc_id, Q, knobs=knobs, max_new_tokens=N_NEW, store=store, reselect=1))
        for _ in s:
            s.cancel()
            break
        with pytest.raises(Cancelled):
            s.result(timeout=120)
        a = sched.submit(AskRequest(info.doc_id, Q, knobs=knobs, max_new_tokens=N_NEW, store=store,
                                    reselect=2)).result(timeout=120)  # max_batch 1: the slot came back
    finally:
        sched.close()
    want = eng.ask(info.doc_id, Q, store=store, max_new_tokens=N_NEW, reselect=2, **knobs)
    assert (a.answer, a.reselected_chunks) == (want.answer, want.reselected_chunks) and a.reselected_chunks
