"""The engine: one loaded model + tokenizer, and everything a worker does with it.

`generate` is plain chat completion with the full model. `ingest` prefills a document once and writes
its L1 + L2 to a store; `ask` answers a question on it with a KV policy (the bi-layer cache and
query-guided refill). `prepare` is `ask` without the decoding, for exactness checks and benchmarks.

The engine's state is declared here: the documents whose L1 is loaded on the device, the device chunk
cache, and the stores it opened. Both caches are safe to share between threads; one `prepare`/`ask`
runs its forward passes on its own KV cache.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable
from typing import Sequence as Seq

import torch

from acre_store import DocLayout, DocMeta, DocumentNotFound, EmbeddedStore, StoreAPI, connect

from .active_layout import ActiveLayout
from .calibrate import load_retrieval_heads
from . import volume
from .chunk_fetcher import ChunkFetcher, FetchStats
from .convert import resolve
from .device_chunk_cache import DeviceChunkCache
from .doc_state import DocState, LayoutConfig, stored_layers
from .errors import DocumentError, InputError, UnknownDocument
from .fingerprint import model_fingerprint
from .generation import SamplingParams, decode
from .ingest import build_l1_parts, document_id, iter_chunks, prefill_document
from .kv_cache import KVCache
from .library import Library, LibraryLayout, LibraryPlan
from .pass1 import Pass1Runner, extend_pass1
from .plan import Plan
from .policies import PlanContext, Policy, make_policy
from .policies.chunk_policy import ChunkPolicy
from .results import Answer, DocInfo, Generation, Planned, Prepared
from .sequence import Sequence
from .tokenizer import Tokenizer
from .weights import load_model

__all__ = ["Engine", "Answer", "DocInfo", "Generation", "Prepared"]

RESERVED_TOKENS = 256  # room for a question and an answer after the longest accepted document
MAX_OPEN_DOCS = 16  # documents whose L1 stays loaded on the device (LRU)
DEFAULT_DEVICE_CACHE_BYTES = 512 << 20
# Opens each document in a library's active cache (after a blank line, so it reads as a new section).
LIBRARY_HEADER = "\n\nDocument {n}: {name}\n"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # On this CPU fp32 is faster than bf16; on CUDA bf16 halves memory and uses tensor cores.
    return torch.bfloat16 if device.type == "cuda" else torch.float32



def check_reselect(reselect) -> None:
    """`reselect` of an ask: an integer >= 0 (0: off)."""
    if not isinstance(reselect, int) or isinstance(reselect, bool) or reselect < 0:
        raise InputError(f"reselect must be an integer >= 0 (0: off), got {reselect!r}")


def check_reselect_policy(reselect: int, policy) -> None:
    """Re-selection refills chunks: only a chunk policy can do it."""
    if reselect and not isinstance(policy, ChunkPolicy):
        raise InputError(f"reselect needs a chunk policy (acre, acre-entropy, acre-l1, fixed-k, random); "
                         f"{policy.name!r} does not refill chunks")


def reselect_due(reselect: int, seq: Sequence) -> bool:
    """Whether re-selection runs before the next decoding step: every `reselect` tokens of the answer,
    once at each such length."""
    n = len(seq.tokens)
    return bool(reselect) and n % reselect == 0 and seq.reselect_done_at != n


class Engine:
    def __init__(self, model, tokenizer: Tokenizer, path: Path, device_cache_bytes: int | None = None,
                 store_layers: str = "global"):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.cfg = model.cfg
        self.fingerprint: str = model_fingerprint(model)
        # L1 of recently used documents on the device, by document id (a content address: the same id
        # is the same bytes in every store), least recently used first.
        self.docs: OrderedDict[str, DocState] = OrderedDict()
        if device_cache_bytes is None:
            device_cache_bytes = int(os.environ.get("ACRE_DEVICE_CACHE_BYTES", DEFAULT_DEVICE_CACHE_BYTES))
        self.chunk_cache = DeviceChunkCache(device_cache_bytes)  # the "GPU tier"
        self.stores: dict[str, StoreAPI] = {}  # stores this engine opened: "" (embedded default) or an address
        self._lock = threading.Lock()  # guards docs and stores
        # This worker's layout of stored layers ("global" | "all", `LayoutConfig.store_layers`): it ingests
        # under it and refuses a document stored under another (it could not run the layers it lacks).
        self.stored_layers: list[int] = stored_layers(self.cfg, LayoutConfig(store_layers=store_layers).store_layers)
        self.store_layers = store_layers
        self.max_open_docs = MAX_OPEN_DOCS  # raise it to keep a whole library's L1 loaded

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, store_layers: str = "global") -> "Engine":
        """Load a model folder (or the default model by name, preparing it if needed). `store_layers`:
        which layers this worker's documents store ("global": a hybrid model's global layers only)."""
        path = resolve(name_or_path)
        dev = torch.device(device) if device is not None else default_device()
        model = load_model(path, device=dev, dtype=dtype or default_dtype(dev))
        return cls(model, Tokenizer.from_folder(path), path, store_layers=store_layers)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype_name(self) -> str:
        return str(self.model.dtype).replace("torch.", "")

    @property
    def max_context(self) -> int:
        return self.cfg.max_position_embeddings

    def check_length(self, n_tokens: int, max_new_tokens: int, what: str = "prompt") -> None:
        if n_tokens + max_new_tokens > self.max_context:
            raise InputError(
                f"{what} is {n_tokens} tokens; with {max_new_tokens} new tokens that exceeds the model's "
                f"context of {self.max_context} tokens")

    # ---- stores and caches ---------------------------------------------------------------------

    def open_store(self, store: StoreAPI | str | None = None) -> StoreAPI:
        """None -> the embedded store under $ACRE_HOME; a string -> a daemon at that address; a store
        object is used as it is. Stores opened here stay open until `close()`."""
        if store is not None and not isinstance(store, str):
            return store
        key = store or ""
        with self._lock:
            if key not in self.stores:
                self.stores[key] = connect(store) if store else EmbeddedStore()
            return self.stores[key]

    def load_document(self, doc_id: str, store: StoreAPI | str | None = None) -> DocState:
        """The document's L1 on this engine's device (read from the store on first use, then cached).
        Refuses a document made with another model or head layout."""
        with self._lock:
            if doc_id in self.docs:
                self.docs.move_to_end(doc_id)
                return self.docs[doc_id]
        st = self.open_store(store)
        try:
            meta = st.info(doc_id)
        except DocumentNotFound:
            raise UnknownDocument(f"unknown document {doc_id}") from None
        lay = meta.layout
        if meta.model_fingerprint != self.fingerprint:
            raise DocumentError(f"document {doc_id[:12]} was made with another model "
                                f"(fingerprint {meta.model_fingerprint[:12]}, this model {self.fingerprint[:12]})")
        theirs_layers = list(meta.extra.get("stored_layers", range(lay.n_layers)))
        if theirs_layers != self.stored_layers:
            raise DocumentError(f"document {doc_id[:12]} stores layers {theirs_layers}; this worker's layout "
                                f"(store_layers={self.store_layers!r}) stores {self.stored_layers}")
        mine = (len(self.stored_layers), self.cfg.num_key_value_heads, self.cfg.head_dim, self.dtype_name)
        theirs = (lay.n_layers, lay.n_kv_heads, lay.head_dim, lay.dtype)
        if mine != theirs:
            raise DocumentError(f"document {doc_id[:12]} has layout (stored layers, kv heads, head_dim, dtype) "
                                f"{theirs}; this worker's layout has {mine}")
        parts = st.get_l1(doc_id)
        # First use on this worker: ask the store to promote the document's chunks to its RAM tier now,
        # so later refills of this document are RAM-hot (returns at once; the store works in the background).
        st.prefetch(doc_id)
        ds = DocState.from_parts(doc_id, meta.extra, parts, lay.n_tokens, lay.chunk_size, self.model.dtype,
                                 self.device, kv_nbytes=lay.kv_nbytes)
        ds.name = meta.name
        with self._lock:
            self.docs[doc_id] = ds
            while len(self.docs) > self.max_open_docs:
                self.docs.popitem(last=False)
        return ds

    def forget(self, doc_id: str) -> None:
        """Drop a document's L1 and refilled chunks from this engine (after it was deleted, say)."""
        with self._lock:
            self.docs.pop(doc_id, None)
        self.chunk_cache.drop_doc(doc_id)

    def reset_caches(self) -> None:
        """Empty the loaded-L1 and device chunk caches: the next question starts cold."""
        with self._lock:
            self.docs.clear()
        self.chunk_cache.clear()

    def close(self) -> None:
        """Close the stores this engine opened."""
        with self._lock:
            stores, self.stores = list(self.stores.values()), {}
        for st in stores:
            st.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def retrieval_heads(self) -> list[tuple[int, int]]:
        return load_retrieval_heads(self.path, self.fingerprint)

    # ---- the three operations ------------------------------------------------------------------

    def generate(self, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, chat: bool = True) -> Generation:
        """Plain completion with the full model (no document)."""
        if not prompt or not prompt.strip():
            raise InputError("empty prompt")
        params = SamplingParams(max_new_tokens, temperature, top_p, seed)
        ids = self.tokenizer.chat_ids(prompt) if chat else self.tokenizer.encode(prompt)
        self.check_length(len(ids), max_new_tokens)
        t0 = time.perf_counter()
        cache = self.model.new_cache(capacity=len(ids) + max_new_tokens)
        logits = self.model.prefill(torch.tensor(ids), cache)
        ttft = time.perf_counter() - t0
        d = decode(self.model, cache, logits, params, self.tokenizer.stop_ids)
        return Generation(self.tokenizer.decode(d.tokens), d.tokens, len(ids), ttft,
                          time.perf_counter() - t0, d.ms_per_token, d.stopped)

    def ingest(self, text: str, store: StoreAPI | str | None = None, name: str | None = None,
               layout: LayoutConfig | None = None, progress: bool = False,
               on_progress: Callable[[int, int], None] | None = None, collection: str | None = None) -> DocInfo:
        """Tokenize, prefill once, write L1 + L2 + proxy map to the store. Re-ingesting is a no-op.

        `on_progress(done_tokens, n_tokens)` is called before the prefill and after each prefill chunk.
        `collection` names a library the document belongs to (kept in its metadata; `acre ask @NAME`). A
        stored document's metadata cannot change: re-ingesting it into another collection is refused."""
        if collection is not None and (not collection.strip() or "," in collection):
            raise InputError(f"bad collection name {collection!r}: give a non-empty name without commas")
        if text is None or not text.strip():
            raise InputError("empty document")
        layout = layout or LayoutConfig(store_layers=self.store_layers)
        if layout.store_layers != self.store_layers:
            raise InputError(f"layout stores {layout.store_layers!r} layers; this worker's layout stores "
                             f"{self.store_layers!r} (it could not ask the document)")
        stored = self.stored_layers
        st = self.open_store(store)
        t0 = time.perf_counter()
        ids = self.tokenizer.document_ids(text)
        limit = self.max_context - RESERVED_TOKENS
        if len(ids) > limit:
            raise InputError(f"document is {len(ids)} tokens; this model accepts at most {limit} "
                             f"({self.max_context} context minus {RESERVED_TOKENS} for question and answer)")
        heads = self.retrieval_heads()
        doc_id = document_id(self.fingerprint, layout, heads, self.dtype_name, ids, stored,
                             self.cfg.num_hidden_layers)
        try:
            meta = st.info(doc_id)
            if collection is not None and meta.extra.get("collection") != collection:
                raise InputError(f"document {doc_id[:12]} is already stored in collection "
                                 f"{meta.extra.get('collection') or '(none)'}; a stored document's collection "
                                 f"cannot change (delete it first)")
            return DocInfo(doc_id, meta.layout.n_tokens, meta.layout.n_chunks, int(meta.extra.get("n_l1", 0)),
                           time.perf_counter() - t0, True, meta.name)
        except DocumentNotFound:
            pass
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), unit="tok", desc="prefill", file=sys.stderr, leave=False)
        done = 0

        def step(n_new: int) -> None:
            nonlocal done
            done += n_new
            if bar is not None:
                bar.update(n_new)
            if on_progress is not None:
                on_progress(done, len(ids))

        if on_progress is not None:
            on_progress(0, len(ids))
        try:
            pf = prefill_document(self.model, ids, layout, step)
        finally:
            if bar is not None:
                bar.close()
        window = self.cfg.sliding_window or 0
        parts = build_l1_parts(pf, layout, heads, stored, window)
        lay = DocLayout(len(stored), self.cfg.num_key_value_heads, self.cfg.head_dim,
                        layout.chunk_size, self.dtype_name, len(ids))
        n_l1 = int(parts["l1_pos"].shape[0])
        extra = {"layout": asdict(layout), "index_heads": [list(h) for h in heads], "n_l1": n_l1,
                 "model": self.path.name, "prefill_s": time.perf_counter() - t0}
        if len(stored) != self.cfg.num_hidden_layers:  # a hybrid model's global layers only
            extra.update(stored_layers=list(stored), window=window,
                         win_layers=[l for l in range(self.cfg.num_hidden_layers) if l not in stored])
        if collection is not None:
            extra["collection"] = collection
        meta = DocMeta(doc_id, self.fingerprint, lay, name=name or "", extra=extra)
        st.put(meta, parts, iter_chunks(pf, layout.chunk_size, stored))
        return DocInfo(doc_id, len(ids), lay.n_chunks, n_l1, time.perf_counter() - t0, False, name or "")

    def prepare(self, doc_id: str | Seq[str], question: str, policy: str | Policy = "acre", answer_prefix: str = "",
                store: StoreAPI | str | None = None, max_new_tokens: int = 1, **knobs) -> Prepared:
        """Run a question over its active cache, up to the first answer token's logits.

        `doc_id` is one document's id, or a list of ids: a question over a library (`_plan_library`).
        `knobs` are the policy's own (e.g. k_max=4 for acre); None values mean "the default"."""
        # 1-5. L1, question ids, plan, layout, refill started (see `plan_question`)
        planned = self.plan_question(doc_id, question, policy, answer_prefix, store, max_new_tokens, **knobs)
        # 6. pass 2: the question over its active cache, each layer's entries installed just before it runs
        result = self.run_pass2([planned])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def plan_question(self, doc_id: str | Seq[str], question: str, policy: str | Policy = "acre", answer_prefix: str = "",
                      store: StoreAPI | str | None = None, max_new_tokens: int = 1, *,
                      pass1: Pass1Runner | None = None, **knobs) -> Planned:
        """Steps 1-5 of `prepare`: everything before pass 2, with the refill started in the background.
        The caller runs `run_pass2` on it (alone or with other questions) or `abandon`s it. `pass1`: what
        runs pass 1's forward (the scheduler batches the pass 1 of questions planned together); None: here.
        (A question over several documents runs its pass 1 here.)"""
        if not question or not question.strip():
            raise InputError("empty question")
        if not isinstance(doc_id, str):
            return self._plan_library(list(doc_id), question, policy, answer_prefix, store, max_new_tokens,
                                      **knobs)
        pol = self._policy(policy, knobs)
        st = self.open_store(store)
        # 1. the document's L1 (attend set, locator index, proxy map) on the device
        doc = self.load_document(doc_id, st)
        # 2. the question's ids: separator, question, end of the user turn, assistant header, prefix
        q_ids = torch.tensor(self.tokenizer.question_ids(question, answer_prefix))
        # 3. the plan: pass 1 over L1, the locator, the refill volume, the chosen chunks (policies/)
        plan = pol.plan(PlanContext(self.model, doc, q_ids, pass1))
        return self._plan_active(st, pol, doc, plan, q_ids, max_new_tokens)

    def _plan_active(self, st: StoreAPI, pol: Policy, doc: DocState, plan: Plan, ids: torch.Tensor,
                     room: int) -> Planned:
        """Steps 4-5 for one document: the active layout of `plan`, a cache with room for `ids` and `room`
        more tokens, and the refill of its chunks started; pass 2 will run `ids` over it."""
        # 4. the active layout: entries each layer attends and their positions (exact or focus)
        layout = ActiveLayout.build(plan, doc, self.cfg.num_hidden_layers)
        cache = self.model.new_cache(capacity=max(layout.n_active, default=0) + len(ids) + room)
        # 5. the refill: chunks from the device cache first, then the store, layer groups in the background
        fetcher = ChunkFetcher(st, doc.doc_id, layout.chunks_needed, len(self.stored_layers), self.chunk_cache,
                               self.model.dtype, self.device, slots=doc.slot)
        ropes = self.model.ropes

        def install(layer: int, kv: KVCache) -> None:  # pass 2 installs each layer just before it runs
            entries = layout.assemble(layer, doc, fetcher.chunk_layer)
            if entries is not None:
                k, v, pos = entries
                kv.append(layer, ropes[layer].rotate(k, pos), v, pos)

        fetcher.__enter__()
        return Planned(pol, doc, plan, layout, cache, ids, fetcher, layout.question_positions(len(ids)),
                       install, LibraryLayout.single_sources(doc, layout))

    def run_pass2(self, planned: Seq[Planned]) -> list[Prepared | BaseException]:
        """Step 6 for planned questions together: one forward runs every question's tokens over its own
        active cache (`LlamaModel.forward_batch`; a question's numbers do not depend on the others).
        Returns per question its `Prepared`, or the error that stopped it (its refill's or the forward's)."""
        try:
            logits = self.model.forward_batch([p.pass2_item() for p in planned])
        except BaseException:
            for p in planned:
                p.abandon()
            raise
        out: list[Prepared | BaseException] = []
        for p, lg in zip(planned, logits):
            if isinstance(lg, BaseException):
                p.abandon()
                out.append(lg)
                continue
            try:
                p.fetcher.finish()  # re-raises a fetch error; fills the device chunk cache
            except BaseException as e:
                out.append(e)
                continue
            out.append(Prepared(p.policy, p.doc, p.plan, p.layout, p.cache, lg, p.fetcher.stats, p.q_ids, p.sources))
        return out

    @staticmethod
    def _policy(policy: str | Policy, knobs: dict) -> Policy:
        if knobs.get("reselect"):
            raise InputError("reselect is a decoding option of an ask (`Engine.ask(reselect=N)`, `AskRequest.reselect`, "
                             "the HTTP field `reselect`, `acre ask --reselect N`), not a policy knob")
        knobs = {k: v for k, v in knobs.items() if v is not None and not (k == "reselect" and v == 0)}
        if isinstance(policy, Policy):
            if knobs:
                raise InputError("pass knobs inside the policy object, not beside it")
            return policy
        return make_policy(policy, **knobs)

    def _plan_library(self, doc_ids: list[str], question: str, policy: str | Policy, answer_prefix: str,
                      store: StoreAPI | str | None, max_new_tokens: int, **knobs) -> Planned:
        """`plan_question` over several documents (library.py): the locator ranks the chunks of all of them,
        the active cache holds the chosen chunks of each, one document after another at focus positions."""
        pol = self._policy(policy, knobs)
        st = self.open_store(store)
        # 1. every document's L1 (refused: another model; then, by Library, another layout)
        library = Library([self.load_document(d, st) for d in doc_ids])
        # 2. the question's ids
        q_ids = torch.tensor(self.tokenizer.question_ids(question, answer_prefix))
        # 3. the plan: one pass 1, every document's locator index on one scale, k chunks among all
        plan = pol.plan_library(self.model, library, q_ids)
        # 4. the layout: sinks once, then per document with chosen chunks a header and its entries
        layout = LibraryLayout.build(plan, library, self.cfg.num_hidden_layers, self._header_ids)
        if not self._library_fits(library, layout, len(q_ids), max_new_tokens):
            raise InputError(f"the active cache over {len(doc_ids)} documents is {max(layout.n_active)} entries; "
                             f"with the question and {max_new_tokens} new tokens that exceeds the model's context "
                             f"of {self.max_context}: lower k_max or neighbors")
        return self._plan_library_active(st, pol, library, plan, layout, q_ids, max_new_tokens)

    def _library_fits(self, library: Library, layout: LibraryLayout, n_ids: int, room: int) -> bool:
        """Whether a library's active cache, `n_ids` tokens run over it and `room` more fit the model's
        context (one document: always, as a single-document ask)."""
        return len(library.docs) == 1 or max(layout.n_active, default=0) + n_ids + room <= self.max_context

    def _plan_library_active(self, st: StoreAPI, pol: Policy, library: Library, plan: LibraryPlan,
                             layout: LibraryLayout, ids: torch.Tensor, room: int) -> Planned:
        """Step 5 over a library: the headers' KV, a cache with room for `ids` and `room` more tokens, and
        one fetch of every document's chunks started; pass 2 will run `ids` over it."""
        n_active = max(layout.n_active, default=0)
        headers = [self._header_kv(layout.prefix_doc, layout.prefix, s.header_ids, s.header_start)
                   for s in layout.segments]
        cache = self.model.new_cache(capacity=n_active + len(ids) + room)
        needed = layout.chunks_needed
        first = layout.segments[0].doc.doc_id
        # 5. one fetch for every document's chunks, layer groups in the background
        fetcher = ChunkFetcher(st, first, needed.pop(first), len(self.stored_layers), self.chunk_cache,
                               self.model.dtype, self.device, more=needed, slots=layout.segments[0].doc.slot)
        ropes = self.model.ropes

        def install(layer: int, kv: KVCache) -> None:
            pre = layout.prefix_entries(layer)
            if pre is not None:
                k, v, pos = pre
                kv.append(layer, ropes[layer].rotate(k, pos), v, pos)
            for seg, hdr, entries in zip(layout.segments, headers, layout.assemble(layer, fetcher.chunk_layer)):
                if hdr is not None and not layout.is_local(layer):  # a hybrid's local layers: no headers
                    kv.append(layer, *hdr[layer])
                if entries is not None:
                    k, v, pos = entries
                    kv.append(layer, ropes[layer].rotate(k, pos), v, pos)

        fetcher.__enter__()
        return Planned(pol, library, plan, layout, cache, ids, fetcher, layout.question_positions(len(ids)),
                       install, layout.sources(library))

    def _header_ids(self, i: int, doc: DocState) -> list[int]:
        """The header that opens the i-th document shown in a library's active cache."""
        return self.tokenizer.encode(f"{LIBRARY_HEADER.format(n=i + 1, name=doc.name or doc.doc_id[:12])}")

    def _header_kv(self, doc: DocState, sinks: torch.Tensor, ids: list[int], start: int):
        """Per layer (k rotated, v, positions) of header tokens `ids` at positions start.., computed by a
        forward over the sinks alone (as each document's chunks were computed without the others). A hybrid
        model's unstored local layers take the sinks from their window entries."""
        if not ids:
            return None
        L = self.cfg.num_hidden_layers
        idx = sinks.to(doc.l1_keys.device)
        ks, vs = [], []
        for i in range(L):
            if doc.is_stored(i):
                ks.append(doc.l1_keys[doc.slot(i)][:, idx])
                vs.append(doc.l1_values[doc.slot(i)][:, idx])
            else:
                k, v = doc.window_of(i)
                w = (doc.win_pos.to(k.device) < doc.layout.n_sink).nonzero().flatten()
                ks.append(k[:, w])
                vs.append(v[:, w])
        cache = KVCache.from_entries(self.model.ropes, ks, vs, torch.arange(idx.numel(), device=idx.device),
                                     extra_capacity=len(ids))
        self.model.forward(torch.tensor(ids), cache, torch.arange(start, start + len(ids)))
        n = idx.numel()
        out = []
        for i in range(L):
            k, v, pos = cache.view(i)
            out.append((k[:, n:], v[:, n:], pos[n:]))
        return out

    def first_token_logits(self, doc_id: str, question: str, policy: str | Policy = "acre",
                           answer_prefix: str = "", store: StoreAPI | str | None = None, **knobs) -> torch.Tensor:
        """Logits [vocab] of the first answer token under a policy (for exactness checks)."""
        return self.prepare(doc_id, question, policy, answer_prefix, store, 1, **knobs).logits

    def ask(self, doc_id: str | Seq[str], question: str, policy: str | Policy = "acre", answer_prefix: str = "",
            store: StoreAPI | str | None = None, max_new_tokens: int = 64, *, temperature: float = 0.0,
            top_p: float = 1.0, sampling_seed: int | None = None, stop: Seq[str] = (), reselect: int = 0,
            **knobs) -> Answer:
        """Answer a question on an ingested document with a KV policy (see `policies/`). Greedy unless a
        temperature is given; the answer ends at a stop token, a stop string, or `max_new_tokens`.

        `doc_id` may be a list of ids: one question over a library of documents (`library.py`); the
        answer's `sources` name the documents and chunks it used.

        `reselect=N` (chunk policies): every N generated tokens the locator runs again with the answer so
        far as part of the query, and chunks it newly needs join the active cache (`reselect_step`; over a
        library, chunks of any of its documents). 0: off. The scheduler (`acre serve`, `--questions`) does
        the same per question.

        The stored document is never changed: every question starts from the same cached state.
        """
        t0 = time.perf_counter()
        check_reselect(reselect)
        sampling = SamplingParams(max_new_tokens, temperature, top_p, sampling_seed)
        # 1-6. L1, question ids, plan, layout, fetch + pass 2 (see `prepare`)
        p = self.prepare(doc_id, question, policy, answer_prefix, store, max_new_tokens, **knobs)
        check_reselect_policy(reselect, p.policy)
        seq = Sequence(p, self.tokenizer, sampling, stop, start=t0)
        # 7. decode: the first token from pass 2's logits, then one step per token, through the same
        # batched step the scheduler uses (a batch of one), so an answer is the same alone or batched
        seq.push(p.logits)
        while not seq.finished:
            t = time.perf_counter()
            if reselect_due(reselect, seq):
                self.reselect_step(seq, self.open_store(store), max_new_tokens - len(seq.tokens))
            logits = self.model.decode_batch([seq.last_token], [seq.cache])[0]
            seq.push(logits, time.perf_counter() - t)
        # 8. the answer and what it cost
        return seq.answer()

    def reselect_step(self, seq: Sequence, st: StoreAPI, room: int) -> None:
        """Re-selection during decoding: pass 1 again with the question and the answer so far as the query
        (incremental: only the answer tokens since the last re-selection run, `pass1.extend_pass1`);
        the policy's residual locator (`ChunkPolicy.locate_more`) names the chunks it still needs that
        the active cache lacks, and they join the plan (nothing already attended is dropped; a
        `kv_budget` caps the union). When some do, the active cache is rebuilt over the union: its chunks
        fetched in the background while the question and the answer so far run over it again (pass 2), so
        the cache is exactly what a question planned with the union from the start would hold after the
        same tokens. Nothing new: nothing changes. (The scheduler runs the two halves, `reselect_plan` and
        `reselect_join`, with other questions' pass 1 and pass 2.)"""
        got = self.reselect_plan(seq, st, room)
        if got is None:
            return
        r = self.run_pass2([got[0]])[0]
        if isinstance(r, BaseException):
            raise r
        self.reselect_join(seq, r, got[1])

    def reselect_plan(self, seq: Sequence, st: StoreAPI, room: int,
                      pass1: Pass1Runner | None = None) -> tuple[Planned, list[int]] | None:
        """Re-selection's first half: the residual locator's pass 1 (through `pass1` when given) and, when
        chunks join, the grown plan with its refill started. Returns (planned, the chunks that join) or None."""
        seq.reselect_done_at = len(seq.tokens)
        p = seq.p
        pol: ChunkPolicy = p.policy
        ids = torch.cat([p.q_ids, torch.tensor(seq.tokens, dtype=p.q_ids.dtype)])
        library = p.doc if isinstance(p.doc, Library) else None
        first = library.docs[0] if library is not None else p.doc  # pass 1 runs over its attend set
        # pass 1 of the question and the answer so far: only the tokens since the last re-selection run,
        # over the cache that one kept (`extend_pass1`)
        layers = pol.library_layers(library) if library is not None else pol.index_layers(p.doc)
        state, seq.pass1_state = seq.pass1_state, None  # not reusable if this pass 1 fails part-way
        seq.pass1_state = extend_pass1(self.model, first, ids, layers, state, pass1)
        ctx = PlanContext(self.model, first, ids, pass1=pass1, probes={layers: seq.pass1_state.probe()})
        if library is not None:
            return self._reselect_library(ctx, pol, library, p.plan, st, room)
        have = set(p.plan.chunks)
        cap = volume.budget_k(getattr(pol, "kv_budget", None), p.doc.n_chunks, 0)  # chunks the budget allows
        new = [c for c in pol.locate_more(ctx, have, cap) if c not in have]  # a subclass may name held ones
        if not new:
            return None
        plan = replace(p.plan, chunks=sorted(have | set(new)))
        # the answer's last token is not in the cache yet: the next decoding step feeds it
        return self._plan_active(st, pol, p.doc, plan, ids[:-1], room), sorted(new)

    def _reselect_library(self, ctx: PlanContext, pol: ChunkPolicy, library: Library, lp: LibraryPlan,
                          st: StoreAPI, room: int) -> tuple[Planned, list[tuple[str, int]]] | None:
        """`reselect_plan` over a library: the residual locator ranks the chunks of every document
        (`ChunkPolicy.locate_more_library`); a document without chosen chunks enters the cache with its
        header when one of its chunks joins. The last found are given up while the grown cache, with the
        question, the answer and its room, would not fit the model's context. Returns the chunks that join
        as (doc_id, chunk) pairs."""
        have = [set(x.chunks) for x in lp.plans]
        cap = volume.budget_k(getattr(pol, "kv_budget", None), sum(d.n_chunks for d in library.docs), 0)
        new = pol.locate_more_library(ctx, library, have, cap)  # best first
        ids = ctx.q_ids[:-1]  # the answer's last token is not in the cache yet
        while new:
            plan = replace(lp, plans=[replace(x, chunks=sorted(h | {c for j, c in new if j == i}))
                                      for i, (x, h) in enumerate(zip(lp.plans, have))])
            layout = LibraryLayout.build(plan, library, self.cfg.num_hidden_layers, self._header_ids)
            if self._library_fits(library, layout, len(ids), room):
                return (self._plan_library_active(st, pol, library, plan, layout, ids, room),
                        sorted((library.docs[i].doc_id, c) for i, c in new))
            new = new[:-1]
        return None

    @staticmethod
    def reselect_join(seq: Sequence, r: Prepared, new: list[int]) -> None:
        """Re-selection's second half: the sequence goes on over the cache its pass 2 (`r`) rebuilt."""
        p = seq.p
        seq.p = replace(p, plan=r.plan, layout=r.layout, cache=r.cache, sources=r.sources,
                        fetch=FetchStats(p.fetch.fetch_s + r.fetch.fetch_s, p.fetch.wait_s + r.fetch.wait_s,
                                         p.fetch.fetched_bytes + r.fetch.fetched_bytes,
                                         p.fetch.device_hits + r.fetch.device_hits))
        seq.reselected += new
