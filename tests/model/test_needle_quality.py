"""Quality on the real model: the locator index finds the needle's chunk, and `acre` answers at least
as well as `full` at a small KV ratio. Documents come from the evaluation namespace of `synth`, never
from the calibration probes.

Each document is ingested, asked and deleted before the next one (the store reuses the freed pages), so
the module holds one document's KV on disk at a time (about 130 MB in fp32), not twenty."""
from __future__ import annotations

import json

import pytest

from acre_model.synth import make_needle_doc

N_DOCS = 20
N_ANSWERED = 6  # documents also asked with 10 new tokens under `acre` and `full`


@pytest.fixture(scope="module")
def needle_results(engine, tmp_path_factory):
    """Per document: did `acre` / `acre-l1` refill the needle's chunk; for the first N_ANSWERED also the
    answers' correctness under `acre` and `full` and acre's KV ratio."""
    import shutil

    from acre_store import EmbeddedStore

    root = tmp_path_factory.mktemp("needles")
    store = EmbeddedStore(str(root / "store"))
    rows = []
    try:
        for i in range(N_DOCS):
            n = 2048 if i % 2 == 0 else 3072 + 512 * (i % 4 == 1)
            d = make_needle_doc(engine.tokenizer.encode, n, depth=(i * 0.31 + 0.07) % 1.0, seed=500 + i)
            info = engine.ingest(d.text, store=store)
            span = engine.tokenizer.document_token_span(d.text, d.needle_char_span)
            need = set(engine.load_document(info.doc_id, store).chunks_of(span))
            row = {"n_tokens": info.n_tokens}
            for pol in ("acre", "acre-l1"):
                ans = engine.ask(info.doc_id, d.question, policy=pol, answer_prefix=d.answer_prefix,
                                 store=store, max_new_tokens=1)
                row[f"hit_{pol}"] = bool(need & set(ans.refilled_chunks))
            if i < N_ANSWERED:
                for pol in ("acre", "full"):
                    a = engine.ask(info.doc_id, d.question, policy=pol, answer_prefix=d.answer_prefix,
                                   store=store, max_new_tokens=10)
                    row[f"right_{pol}"] = d.answer in a.answer
                    row[f"kv_{pol}"] = a.kv_ratio
            store.delete(info.doc_id)
            rows.append(row)
        yield rows
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


def test_locator_index_finds_the_needle_chunk(needle_results, record_property):
    acre = sum(r["hit_acre"] for r in needle_results) / len(needle_results)
    seed = sum(r["hit_acre-l1"] for r in needle_results) / len(needle_results)
    record_property("needle_chunk_recall", json.dumps({"acre": acre, "acre-l1": seed}))
    print(f"\nneedle-chunk recall over {len(needle_results)} documents of 2k-3.5k tokens: "
          f"acre {acre:.2f}, acre-l1 {seed:.2f}")
    assert len(needle_results) == N_DOCS
    assert acre >= 0.9
    assert acre > seed  # the measured reason the index locator is the default


def test_acre_answers_as_well_as_full_at_small_kv_ratio(needle_results):
    answered = needle_results[:N_ANSWERED]
    right = {pol: sum(r[f"right_{pol}"] for r in answered) for pol in ("acre", "full")}
    for r in answered:
        assert r["kv_acre"] <= 0.2, (r["kv_acre"], r["n_tokens"])
    print(f"\ncorrect on {N_ANSWERED} documents: {right}")
    assert right["acre"] >= right["full"]
    # An absolute floor as well: the comparison alone also passes at 0 of 6 vs 0 of 6. Measured: acre 6,
    # full 5 (CPU, fp32, greedy).
    assert right["acre"] >= 5
