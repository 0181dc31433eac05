"""Quality on the real model: the locator index finds the needle's chunk, and `acre` answers at least
as well as `full` at a small KV ratio. Documents come from the evaluation namespace of `synth`, never
from the calibration probes."""
from __future__ import annotations

import json

import pytest

from acre_model.synth import make_needle_doc

N_DOCS = 20


@pytest.fixture(scope="module")
def needle_docs(engine, tmp_path_factory):
    from acre_store import EmbeddedStore

    store = EmbeddedStore(str(tmp_path_factory.mktemp("needles") / "store"))
    docs = []
    for i in range(N_DOCS):
        n = 2048 if i % 2 == 0 else 3072 + 512 * (i % 4 == 1)
        d = make_needle_doc(engine.tokenizer.encode, n, depth=(i * 0.31 + 0.07) % 1.0, seed=500 + i)
        info = engine.ingest(d.text, store=store)
        docs.append((d, info, engine.tokenizer.document_token_span(d.text, d.needle_char_span)))
    yield store, docs
    store.close()


def _recall(engine, store, docs, policy):
    hits = 0
    for d, info, span in docs:
        ans = engine.ask(info.doc_id, d.question, policy=policy, answer_prefix=d.answer_prefix, store=store,
                         max_new_tokens=1)
        need = engine.load_document(info.doc_id, store).chunks_of(span)
        hits += bool(set(need) & set(ans.refilled_chunks))
    return hits / len(docs)


def test_locator_index_finds_the_needle_chunk(engine, needle_docs, record_property):
    store, docs = needle_docs
    acre = _recall(engine, store, docs, "acre")
    seed = _recall(engine, store, docs, "acre-l1")
    record_property("needle_chunk_recall", json.dumps({"acre": acre, "acre-l1": seed}))
    print(f"\nneedle-chunk recall over {len(docs)} documents of 2k-3.5k tokens: acre {acre:.2f}, acre-l1 {seed:.2f}")
    assert acre >= 0.9
    assert acre > seed  # the measured reason the index locator is the default


def test_acre_answers_as_well_as_full_at_small_kv_ratio(engine, needle_docs):
    store, docs = needle_docs
    right = {"acre": 0, "full": 0}
    for d, info, _ in docs[:6]:
        for pol in right:
            a = engine.ask(info.doc_id, d.question, policy=pol, answer_prefix=d.answer_prefix, store=store,
                           max_new_tokens=10)
            right[pol] += d.answer in a.answer
            if pol == "acre":
                assert a.kv_ratio <= 0.2, (a.kv_ratio, info.n_tokens)
    print(f"\ncorrect on 6 documents: {right}")
    assert right["acre"] >= right["full"]
    # An absolute floor as well: the comparison alone also passes at 0 of 6 vs 0 of 6. Measured: acre 6,
    # full 5 (CPU, fp32, greedy).
    assert right["acre"] >= 5
