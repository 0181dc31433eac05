"""The library re-ranking study's helpers (the study itself needs the real model and a 100-document store)."""
import torch

from tools.library_rerank_study import doc_rank, row_rule


def test_doc_rank_scores_a_document_by_its_best_chunk():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.2])
    owners = [0, 1, 2, 2]
    assert doc_rank(scores, owners, 1) == 0
    assert doc_rank(scores, owners, 2) == 1
    assert doc_rank(scores, owners, 0) == 2
    assert doc_rank(scores, owners, 7) == 3  # not among the candidates: after every one of them


def test_peak_rule_ignores_rows_every_candidate_shares():
    # row 0 matches all three candidates alike (a phrase every fact shares), row 1 picks candidate 2
    p = torch.tensor([[0.30, 0.30, 0.30], [0.05, 0.05, 0.60]])
    assert row_rule(p, "peak").argmax() == 2
    assert torch.allclose(row_rule(p, "sum"), torch.tensor([0.35, 0.35, 0.90]))
    assert torch.allclose(row_rule(p, "rowmax"), torch.tensor([0.30, 0.30, 0.60]))
    shared_only = torch.tensor([[0.3, 0.3, 0.3]])
    assert torch.count_nonzero(row_rule(shared_only, "peak")) == 0


def test_index_rebuilt_from_the_stored_chunks_is_the_documents_own_index(tmp_path, default_model_path):
    # what the study's `--index-heads` ranks with: keys from L2, rotated at their positions, float16 as the
    # index is stored; at the document's own heads it must be the index ingestion wrote
    from tests.model.tiny import tiny_with_doc
    from tools.library_rerank_study import index_from_store

    eng, store, info = tiny_with_doc(tmp_path, default_model_path, seed=3)
    try:
        doc = eng.load_document(info.doc_id, store)
        rebuilt = index_from_store(store, doc, doc.index_heads, eng.model)
        assert rebuilt.shape == doc.index_keys.shape
        torch.testing.assert_close(rebuilt, doc.index_keys, rtol=0, atol=2e-3)
        swapped = index_from_store(store, doc, doc.index_heads[::-1], eng.model)  # heads keep the order asked
        torch.testing.assert_close(swapped, doc.index_keys.flip(0), rtol=0, atol=2e-3)
    finally:
        store.close()
