"""The CUDA path (bf16, scaled_dot_product_attention on the GPU). Skipped without a CUDA device."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_generate_on_cuda_bf16(default_model_path):
    from acre_model.engine import Engine

    eng = Engine.from_pretrained(str(default_model_path), device="cuda")
    assert eng.model.dtype == torch.bfloat16
    assert "Paris" in eng.generate("What is the capital of France?", max_new_tokens=16).text


def test_full_policy_matches_plain_forward_on_cuda(default_model_path, tmp_path):
    from acre_model.engine import Engine
    from acre_model.synth import make_needle_doc
    from acre_store import EmbeddedStore

    eng = Engine.from_pretrained(str(default_model_path), device="cuda")
    d = make_needle_doc(eng.tokenizer.encode, 1500, 0.5, seed=1)
    with EmbeddedStore(str(tmp_path / "s")) as st:
        info = eng.ingest(d.text, store=st)
        got = eng.first_token_logits(info.doc_id, d.question, policy="full", answer_prefix=d.answer_prefix,
                                     store=st)
        parts = eng.tokenizer.prompt_ids(d.text, d.question, d.answer_prefix)
        ref = eng.model.prefill(torch.tensor(parts.prefix + parts.suffix), eng.model.new_cache())
        assert torch.equal(got.argmax(), ref.argmax())
        assert (got - ref).abs().max().item() < 0.5  # bf16: same computation, different summation order
        a = eng.ask(info.doc_id, d.question, answer_prefix=d.answer_prefix, store=st, max_new_tokens=10)
        assert d.answer in a.answer


def test_batched_answers_on_cuda(default_model_path, tmp_path):
    """The scheduler on CUDA (bf16, refill through pinned buffers and a side stream): several questions
    decoded together find their needles. (Bitwise batch invariance is measured on the CPU's BLAS only.)"""
    from acre_model.engine import Engine
    from acre_model.scheduler import AskRequest, Scheduler
    from acre_model.synth import make_needle_doc
    from acre_store import EmbeddedStore

    eng = Engine.from_pretrained(str(default_model_path), device="cuda")
    docs = [make_needle_doc(eng.tokenizer.encode, 3000, depth, seed=40 + i) for i, depth in enumerate((0.2, 0.5, 0.8))]
    with EmbeddedStore(str(tmp_path / "s")) as st:
        ids = [eng.ingest(d.text, store=st).doc_id for d in docs]
        sched = Scheduler(eng)
        try:
            streams = [sched.submit(AskRequest(i, d.question, "acre", d.answer_prefix, 12, store=st))
                       for i, d in zip(ids, docs)]
            answers = [s.result(timeout=300) for s in streams]
        finally:
            sched.close()
        assert sum(d.answer in a.answer for d, a in zip(docs, answers)) >= 2
        assert all(a.kv_ratio < 0.3 and a.fetched_bytes > 0 for a in answers)
