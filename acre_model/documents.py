"""Ingest once, ask many times: the bi-layer cache operations of the engine.

`DocumentsMixin` gives `Engine` its `ingest` and `ask`; it needs `model`, `tokenizer`, `path`, `cfg`
and `device` from the engine.
"""
from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch

from .doc_state import DocState, LayoutConfig
from .errors import DocumentError, InputError
from .generation import SamplingParams, decode


@dataclass
class DocInfo:
    doc_id: str
    n_tokens: int
    n_chunks: int
    n_l1: int
    seconds: float
    existed: bool  # already in the store: nothing was prefilled
    name: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Answer:
    answer: str
    policy: str
    kv_ratio: float
    refilled_chunks: list
    entropy: float | None
    k: int | None
    mode: str
    ttft_s: float
    total_s: float
    decode_ms_per_token: float
    n_tokens: int
    n_active: int
    n_new_tokens: int
    fetch_s: float
    fetch_wait_s: float
    fetched_bytes: int
    index_share: float  # bytes of the locator index / bytes of the full KV
    doc_id: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


QUESTION_SEPARATOR = "\n\n"
RESERVED_TOKENS = 256  # room for a question and an answer after the longest accepted document


class DocumentsMixin:
    @property
    def fingerprint(self) -> str:
        if getattr(self, "_fingerprint", None) is None:
            from .fingerprint import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @property
    def dtype_name(self) -> str:
        return str(self.model.dtype).replace("torch.", "")

    def _store(self, store):
        """None -> the embedded store under $ACRE_HOME; a string -> a daemon address; else a store object."""
        if store is None:
            if getattr(self, "_default_store", None) is None:
                from acre_store import EmbeddedStore

                self._default_store = EmbeddedStore()
            return self._default_store
        if isinstance(store, str):
            cache = self.__dict__.setdefault("_clients", {})
            if store not in cache:
                from acre_store import connect

                cache[store] = connect(store)
            return cache[store]
        return store

    def retrieval_heads(self) -> list[tuple[int, int]]:
        from .calibrate import load_retrieval_heads

        return load_retrieval_heads(self.path, self.fingerprint)

    def ingest(self, text: str, store=None, name: str | None = None, layout=None,
                progress: bool = False) -> DocInfo:
        """Tokenize, prefill once, write L1 + L2 + proxy map to the store. Re-ingesting is a no-op."""
        from acre_store import DocLayout, DocMeta, DocumentNotFound

        from .ingest import build_l1_parts, document_id, iter_chunks, prefill_document

        if text is None or not text.strip():
            raise InputError("empty document")
        layout = layout or LayoutConfig()
        st = self._store(store)
        t0 = time.perf_counter()
        ids = self.tokenizer.document_ids(text.rstrip())
        limit = self.max_context - RESERVED_TOKENS
        if len(ids) > limit:
            raise InputError(f"document is {len(ids)} tokens; this model accepts at most {limit} "
                             f"({self.max_context} context minus {RESERVED_TOKENS} for question and answer)")
        heads = self.retrieval_heads()
        doc_id = document_id(self.fingerprint, layout, heads, self.dtype_name, ids)
        try:
            meta = st.info(doc_id)
            return DocInfo(doc_id, meta.layout.n_tokens, meta.layout.n_chunks, int(meta.extra.get("n_l1", 0)),
                           time.perf_counter() - t0, True, meta.name)
        except DocumentNotFound:
            pass
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), unit="tok", desc="prefill", file=sys.stderr, leave=False)
        try:
            pf = prefill_document(self.model, ids, layout, bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        parts = build_l1_parts(pf, layout, heads)
        lay = DocLayout(self.cfg.num_hidden_layers, self.cfg.num_key_value_heads, self.cfg.head_dim,
                        layout.chunk_size, self.dtype_name, len(ids))
        n_l1 = int(parts["l1_pos"].shape[0])
        extra = {"layout": asdict(layout), "index_heads": [list(h) for h in heads], "n_l1": n_l1,
                 "model": self.path.name, "prefill_s": time.perf_counter() - t0}
        meta = DocMeta(doc_id, self.fingerprint, lay, name=name or "", extra=extra)
        st.put(meta, parts, iter_chunks(pf, layout.chunk_size))
        return DocInfo(doc_id, len(ids), lay.n_chunks, n_l1, time.perf_counter() - t0, False, name or "")

    def _doc_state(self, doc_id: str, store):
        """The document's L1 on this worker's device (loaded once, then cached)."""
        from acre_store import DocumentNotFound

        cache = self.__dict__.setdefault("_docs", OrderedDict())
        key = (id(store), doc_id)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        try:
            meta = store.info(doc_id)
        except DocumentNotFound:
            raise DocumentError(f"unknown document {doc_id}") from None
        lay = meta.layout
        if meta.model_fingerprint != self.fingerprint:
            raise DocumentError(f"document {doc_id[:12]} was made with another model "
                                f"(fingerprint {meta.model_fingerprint[:12]}, this model {self.fingerprint[:12]})")
        mine = (self.cfg.num_hidden_layers, self.cfg.num_key_value_heads, self.cfg.head_dim, self.dtype_name)
        theirs = (lay.n_layers, lay.n_kv_heads, lay.head_dim, lay.dtype)
        if mine != theirs:
            raise DocumentError(f"document {doc_id[:12]} has layout (layers, kv heads, head_dim, dtype) {theirs}; "
                                f"this worker's model has {mine}")
        parts = store.get_l1(doc_id)
        # First use on this worker: ask the store to promote the document's chunks to its RAM tier now,
        # so later refills of this document are RAM-hot (returns at once; the store works in the background).
        store.prefetch(doc_id)
        ds = DocState.from_parts(doc_id, meta.extra, parts, lay.n_tokens, lay.chunk_size, self.model.dtype,
                                 self.device)
        ds.extra["kv_nbytes"] = lay.kv_nbytes
        cache[key] = ds
        while len(cache) > 16:
            cache.popitem(last=False)
        return ds

    def chunk_cache(self):
        if getattr(self, "_cc", None) is None:
            from .refill import DeviceChunkCache

            self._cc = DeviceChunkCache(int(os.environ.get("ACRE_DEVICE_CACHE_BYTES", 512 << 20)))
        return self._cc

    def _prepare(self, doc_id: str, question: str, policy: str, answer_prefix: str, store,
                 max_new_tokens: int, params: dict):
        """Plan, refill and run the question (pass 2). Returns (policy, plan, refill, logits, doc)."""
        from .policies import AskContext, AskParams, get_policy, policy_names
        from .refill import Refill

        if not question or not question.strip():
            raise InputError("empty question")
        try:
            pol = get_policy(policy)
        except KeyError:
            raise InputError(f"unknown policy {policy!r}; choose one of {', '.join(policy_names())}") from None
        try:
            prm = AskParams(**{k: v for k, v in params.items() if v is not None})
        except TypeError as e:
            raise InputError(f"bad ask parameter: {e}") from None
        except ValueError as e:
            raise InputError(str(e)) from None
        st = self._store(store)
        doc = self._doc_state(doc_id, st)
        q_ids = torch.tensor(self.tokenizer.question_ids(QUESTION_SEPARATOR + question.strip(), answer_prefix))
        plan = pol.plan(AskContext(doc, q_ids, self.model, prm))
        rf = Refill(self.model, doc, plan, st, self.chunk_cache(), q_len=len(q_ids),
                    extra_capacity=max_new_tokens)
        pos = torch.arange(rf.q_start, rf.q_start + len(q_ids))
        try:
            logits = self.model.forward(q_ids, rf.cache, pos, before_layer=rf.before_layer)
        except BaseException:
            rf.finish(raise_error=False)
            raise
        return pol, plan, rf, logits, doc

    def first_token_logits(self, doc_id: str, question: str, policy: str = "acre", answer_prefix: str = "",
                           store=None, **params) -> torch.Tensor:
        """Logits [vocab] of the first answer token under a policy (for exactness checks)."""
        _, _, rf, logits, _ = self._prepare(doc_id, question, policy, answer_prefix, store, 1, params)
        rf.finish()
        return logits

    def ask(self, doc_id: str, question: str, policy: str = "acre", answer_prefix: str = "", store=None,
            max_new_tokens: int = 64, **params) -> Answer:
        """Answer a question on an ingested document with a KV policy (see acre_model.policies).

        The stored document is never changed: every question starts from the same cached state.
        """
        t0 = time.perf_counter()
        pol, plan, rf, logits, doc = self._prepare(doc_id, question, policy, answer_prefix, store,
                                                   max_new_tokens, params)
        ttft = time.perf_counter() - t0
        d = decode(self.model, rf.cache, logits, SamplingParams(max_new_tokens), self.tokenizer.stop_ids)
        rf.finish()
        kv_bytes = doc.extra.get("kv_nbytes") or 1
        return Answer(
            answer=self.tokenizer.decode(d.tokens).strip(), policy=pol.name, kv_ratio=rf.kv_ratio,
            refilled_chunks=list(plan.chunks), entropy=plan.entropy, k=plan.k, mode=plan.mode, ttft_s=ttft,
            total_s=time.perf_counter() - t0, decode_ms_per_token=d.ms_per_token, n_tokens=doc.n_tokens,
            n_active=max(rf.n_active), n_new_tokens=len(d.tokens), fetch_s=rf.fetch_s, fetch_wait_s=rf.wait_s,
            fetched_bytes=rf.fetched_bytes, index_share=doc.index_nbytes / kv_bytes, doc_id=doc_id)
