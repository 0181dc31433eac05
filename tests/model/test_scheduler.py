"""Continuous batching: questions in flight at once answer exactly as they do alone; streaming, stop
strings, cancellation and errors; on a tiny random model (real tokenizer, real store) and briefly on
the real model."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from acre_model.errors import InputError, UnknownDocument
from acre_model.scheduler import AskRequest, Cancelled, Delta, Done, Scheduler, SchedulerClosed
from acre_model.synth import make_needle_doc
from tests.model.tiny import DOC, make_tiny_folder

DOC2 = " ".join(f"Item {i}: the {a} keeps a {b} in the {c}." for i, (a, b, c) in enumerate(
    [("baker", "lamp", "attic"), ("pilot", "map", "drawer"), ("miner", "coin", "boot")] * 14))
ASKS = [(0, "What colour is the grass?", "acre", {}), (1, "Where does the pilot keep the map?", "acre", {}),
        (0, "What colour is the sea?", "full", {}), (1, "What does the baker keep?", "fixed-k", {"fixed_k": 3}),
        (0, "Which sentence mentions the sun?", "streaming", {"budget": 0.3}),
        (1, "Who keeps a coin?", "acre", {"mode": "exact", "k_max": 4}), (0, "Name a colour.", "l1-only", {}),
        (1, "Where is the lamp?", "h2o", {})]


class Recorder:
    def __init__(self):
        self.batch_sizes: list[int] = []
        self.done, self.errors = [], []

    def on_step(self, batch_size, queue_depth):
        self.batch_sizes.append(batch_size)

    def on_done(self, answer):
        self.done.append(answer)

    def on_error(self, exc):
        self.errors.append(exc)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_path):
    from acre_model.engine import Engine
    from acre_store import EmbeddedStore

    root = tmp_path_factory.mktemp("sched")
    eng = Engine.from_pretrained(str(make_tiny_folder(root / "m", default_model_path, seed=3)), device="cpu")
    store = EmbeddedStore(str(root / "s"))
    docs = [eng.ingest(DOC, store=store).doc_id, eng.ingest(DOC2, store=store).doc_id]
    yield eng, store, docs
    store.close()


def request(docs, store, i, n=12, **kw):
    d, q, pol, knobs = ASKS[i]
    return AskRequest(docs[d], q, policy=pol, knobs=dict(knobs), max_new_tokens=n, store=store, **kw)


def test_batched_answers_equal_the_same_questions_asked_alone(tiny):
    eng, store, docs = tiny
    alone = [eng.ask(docs[d], q, pol, store=store, max_new_tokens=12, **k) for d, q, pol, k in ASKS]
    rec = Recorder()
    sched = Scheduler(eng, max_batch=8, listener=rec)
    try:
        streams = [sched.submit(request(docs, store, i)) for i in range(len(ASKS))]
        got = [s.result(timeout=120) for s in streams]
    finally:
        sched.close()
    assert max(rec.batch_sizes) >= 3  # they really decoded together
    for a, b in zip(alone, got):
        assert (b.answer, b.n_new_tokens, b.refilled_chunks, b.policy) == (a.answer, a.n_new_tokens,
                                                                         a.refilled_chunks, a.policy)
        assert b.kv_ratio == a.kv_ratio and b.doc_id == a.doc_id
    assert len(rec.done) == len(ASKS) and not rec.errors


def test_pass_two_of_questions_planned_together_equals_each_alone(tiny):
    """`Engine.run_pass2` over several planned questions (different documents, policies, lengths) gives
    each the logits, layout and chunks of `prepare` alone, bitwise; a question whose refill fails gets
    its error and the others their results."""
    eng, store, docs = tiny
    alone = [eng.prepare(docs[d], q, pol, store=store, **k) for d, q, pol, k in ASKS[:5]]
    planned = [eng.plan_question(docs[d], q, pol, store=store, **k) for d, q, pol, k in ASKS[:5]]
    got = eng.run_pass2(planned)
    for a, b in zip(alone, got):
        assert torch.equal(a.logits, b.logits)
        assert a.plan.chunks == b.plan.chunks and a.layout.n_active == b.layout.n_active

    class Boom(RuntimeError):
        pass

    eng.reset_caches()  # the refill must go to the store
    planned = [eng.plan_question(docs[d], q, pol, store=store, **k) for d, q, pol, k in ASKS[:2]]
    f = planned[1].fetcher
    assert f.missing, "the test needs a question that refills from the store"

    def fail(c, layer):
        raise Boom("refill failed")

    f.chunk_layer = fail
    got = eng.run_pass2(planned)
    assert isinstance(got[1], Boom)
    assert torch.equal(got[0].logits, alone[0].logits)


def test_pass_one_of_questions_run_together_equals_each_alone(tiny):
    """`pass1.run_jobs` over several questions' pass 1 (different documents, lengths, probes and last
    layers) records for each the same queries and probabilities as a job run alone, bitwise."""
    from acre_model.pass1 import pass1_job, run_jobs

    eng, store, docs = tiny
    specs = [(0, "What colour is the grass?", [0], True, False), (1, "Where does the pilot keep the map?", [0, 1],
             True, True), (0, "Name a colour.", [1], False, True), (1, "Who keeps a coin?", [0], True, False)]

    def jobs():
        return [pass1_job(eng.model, eng.load_document(docs[d], store), torch.tensor(eng.tokenizer.question_ids(q, "")),
                          layers, wq, wp) for d, q, layers, wq, wp in specs]

    alone = jobs()
    for j in alone:
        assert run_jobs(eng.model, [j]) == [None]
    together = jobs()
    assert run_jobs(eng.model, together) == [None] * len(specs)
    for a, b, (_, _, layers, wq, wp) in zip(alone, together, specs):
        pa, pb = a.item.probe, b.item.probe
        for layer in layers:
            if wq:
                assert torch.equal(pa.queries[layer], pb.queries[layer])
            if wp:
                assert torch.equal(pa.probs[layer], pb.probs[layer])


def test_the_scheduler_runs_pass_one_of_waiting_questions_together(tiny, monkeypatch):
    """Questions submitted at once share pass 1 forwards (on the decoding thread) and still answer as alone."""
    import acre_model.scheduler as sched_mod

    eng, store, docs = tiny
    sizes = []
    real = sched_mod.run_jobs

    def counting(model, jobs):
        sizes.append(len(jobs))
        if len(sizes) == 1:
            time.sleep(0.3)  # a slow first forward: the other planners' pass 1 jobs wait for the next one
        return real(model, jobs)

    monkeypatch.setattr(sched_mod, "run_jobs", counting)
    alone = [eng.ask(docs[d], q, pol, store=store, max_new_tokens=4, **k) for d, q, pol, k in ASKS]
    sched = Scheduler(eng, max_batch=8, planners=8)
    try:
        got = [s.result(timeout=120) for s in [sched.submit(request(docs, store, i, n=4)) for i in range(len(ASKS))]]
    finally:
        sched.close()
    assert max(sizes) >= 2, sizes
    assert [g.answer for g in got] == [a.answer for a in alone]


def test_a_question_joins_a_running_batch(tiny):
    eng, store, docs = tiny
    rec = Recorder()
    sched = Scheduler(eng, max_batch=4, listener=rec)
    try:
        long = sched.submit(request(docs, store, 1, n=60))
        it = iter(long)
        next(it)  # the long question is decoding
        late = sched.submit(request(docs, store, 0, n=5))
        late_answer = late.result(timeout=60)
        assert not long.answer  # the late question finished while the long one was still running
        rest = list(it)
    finally:
        sched.close()
    assert 2 in rec.batch_sizes
    assert isinstance(rest[-1], Done) and late_answer.answer == eng.ask(
        docs[0], ASKS[0][1], "acre", store=store, max_new_tokens=5).answer


def test_streamed_deltas_concatenate_to_the_answer(tiny):
    eng, store, docs = tiny
    sched = Scheduler(eng)
    try:
        events = list(sched.submit(request(docs, store, 3, n=16)))
    finally:
        sched.close()
    assert isinstance(events[-1], Done) and all(isinstance(e, Delta) for e in events[:-1])
    text = "".join(e.text for e in events[:-1])
    assert text.strip() == events[-1].answer.answer and len(events) > 2


def test_stop_strings_cut_the_answer_and_are_not_streamed(tiny):
    eng, store, docs = tiny
    full = eng.ask(docs[0], ASKS[2][1], "full", store=store, max_new_tokens=16)
    words = full.answer.split()
    assert len(words) >= 3, full.answer
    stop = words[2]
    cut = eng.ask(docs[0], ASKS[2][1], "full", store=store, max_new_tokens=16, stop=[stop])
    assert stop not in cut.answer and full.answer.startswith(cut.answer)
    sched = Scheduler(eng)
    try:
        events = list(sched.submit(request(docs, store, 2, n=16, stop=[stop])))
    finally:
        sched.close()
    streamed = "".join(e.text for e in events if isinstance(e, Delta))
    assert stop not in streamed and events[-1].answer.answer == cut.answer


def test_cancel_frees_the_slot(tiny):
    eng, store, docs = tiny
    sched = Scheduler(eng, max_batch=1)
    try:
        first = sched.submit(request(docs, store, 1, n=500))
        it = iter(first)
        next(it)
        second = sched.submit(request(docs, store, 0, n=4))  # waits for the only slot
        first.cancel()
        assert second.result(timeout=60).n_new_tokens <= 4
        assert not any(isinstance(e, Done) for e in it)  # the cancelled question ends without an answer
        with pytest.raises(Cancelled):
            first.result(timeout=10)
    finally:
        sched.close()


def test_errors_reach_their_question_only(tiny):
    eng, store, docs = tiny
    rec = Recorder()
    sched = Scheduler(eng, listener=rec)
    try:
        bad_doc = sched.submit(AskRequest("ab" * 20, "Anyone there?", store=store))
        bad_knob = sched.submit(AskRequest(docs[0], "Anyone there?", knobs={"budget": 0.2}, store=store))
        good = sched.submit(request(docs, store, 0, n=3))
        with pytest.raises(UnknownDocument):
            bad_doc.result(timeout=60)
        with pytest.raises(InputError, match="budget"):
            list(bad_knob)
        assert good.result(timeout=60).n_new_tokens >= 1
        with pytest.raises(InputError, match="question"):
            sched.submit(AskRequest(docs[0], "  "))
        with pytest.raises(InputError, match="temperature"):
            sched.submit(AskRequest(docs[0], "q?", temperature=-1))
        with pytest.raises(InputError, match="max_new_tokens"):
            sched.submit(AskRequest(docs[0], "q?", max_new_tokens=0))
    finally:
        sched.close()
    assert len(rec.errors) == 2


def test_close_finishes_what_is_in_flight_and_refuses_new_questions(tiny):
    eng, store, docs = tiny
    sched = Scheduler(eng, max_batch=2)
    streams = [sched.submit(request(docs, store, i, n=6)) for i in range(4)]
    closer = threading.Thread(target=sched.close)
    closer.start()
    answers = [s.result(timeout=120) for s in streams]
    closer.join(60)
    assert all(a.n_new_tokens >= 1 for a in answers)
    with pytest.raises(SchedulerClosed, match="shutting down"):
        sched.submit(request(docs, store, 0))


def test_real_model_batched_equals_alone(engine, tmp_path):
    from acre_store import EmbeddedStore

    with EmbeddedStore(str(tmp_path / "s")) as store:
        d = make_needle_doc(engine.tokenizer.encode, 1000, 0.4, seed=900)
        doc_id = engine.ingest(d.text, store=store).doc_id
        pols = ("acre", "full", "snapkv")
        alone = [engine.ask(doc_id, d.question, pol, d.answer_prefix, store, 10) for pol in pols]
        sched = Scheduler(engine)
        try:
            streams = [sched.submit(AskRequest(doc_id, d.question, pol, d.answer_prefix, 10, store=store))
                       for pol in pols]
            got = [s.result(timeout=300) for s in streams]
        finally:
            sched.close()
        assert [g.answer for g in got] == [a.answer for a in alone]
        assert d.answer in got[0].answer  # and acre's answer is right
