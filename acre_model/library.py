"""A library: one question over several ingested documents.

Each document keeps its own L1 and locator index. The locator ranks the chunks of all documents
together (one softmax over every document's tokens, `locator.library_chunk_scores`), the volume rule
picks k chunks among all of them, and the active cache holds, for each document that has chosen chunks,
its attend set (L1 entries of chunks not refilled) and its refilled chunks, one document after another
at focus positions (renumbered contiguously), the locator's best document last (nearest the question).
The chat template's start (the sinks) is kept once, from the first document shown; every document shown
starts with a short header ("Document 2: NAME") whose KV is computed by a forward over those sinks, so
the model sees where one document ends and the next begins.

Only documents with chosen chunks enter the active cache, and k is bounded by the policy, so the active
cache stays within the model's context whatever the number of documents: a library's total size is
limited by the store, not by the model. With one document the layout is exactly the single-document
layout (no header), so a library ask over one document equals the single-document ask.

On a hybrid model whose documents store their global layers only, all of the above holds on the global
layers; the local (sliding-window) layers hold the window of the document shown last (the locator's best,
nearest the question), renumbered to end just before the question as in a single-document focus ask, and
nothing of the other documents (none of their local-layer KV is stored beyond their own last window).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .active_layout import ActiveLayout, LayerEntries
from .doc_state import DocState
from .errors import InputError
from .plan import Plan

# chunk_layer(c, layer, doc_id) -> [2, n_kv_heads, len_c, head_dim]: one layer of one chunk of a document
LibraryChunkLayer = Callable[[int, int, str], torch.Tensor]


@dataclass
class Library:
    """The loaded documents of one question, in the order the user named them."""

    docs: list[DocState]

    def __post_init__(self) -> None:
        if not self.docs:
            raise InputError("a question needs at least one document")
        ids = [d.doc_id for d in self.docs]
        dup = sorted({i[:12] for i in ids if ids.count(i) > 1})
        if dup:
            raise InputError(f"document {', '.join(dup)} is named more than once")
        self.check_compatible()

    def check_compatible(self) -> None:
        """All documents must share chunk size, L1 layout and locator heads (and, on a hybrid model, the
        stored layers): their chunks are then ranked on one scale and assembled into one cache. Otherwise
        an InputError names them."""
        def key(d: DocState):
            return (d.chunk_size, tuple(sorted(d.extra.get("layout", {}).items())), tuple(d.index_heads),
                    str(d.l1_keys.dtype), tuple(d.win_layers))

        first = key(self.docs[0])
        odd = [d for d in self.docs if key(d) != first]
        if odd:
            names = ", ".join(d.doc_id[:12] for d in odd)
            raise InputError(
                f"documents {names} were ingested with another layout (chunk size, L1 layout, locator heads or "
                f"dtype) than {self.docs[0].doc_id[:12]}; one question can only span documents of one layout")

    @property
    def doc_id(self) -> str:
        return ",".join(d.doc_id for d in self.docs)

    @property
    def n_tokens(self) -> int:
        return sum(d.n_tokens for d in self.docs)

    @property
    def index_nbytes(self) -> int:
        return sum(d.index_nbytes for d in self.docs)

    @property
    def kv_nbytes(self) -> int:
        return sum(d.kv_nbytes for d in self.docs)


@dataclass
class LibraryPlan:
    """What a chunk policy chose over a library: one `Plan` per document (library order)."""

    doc_ids: list[str]
    plans: list[Plan]
    mode: str = "focus"
    entropy: float | None = None  # normalised entropy of the joint distribution over all chunks
    k: int | None = None  # chunks chosen by the volume rule, over all documents, before neighbours
    p: torch.Tensor | None = None  # [total chunks] the joint distribution, documents in library order
    doc_scores: list[float] | None = None  # per document: the largest p of its chunks (None: keep library order)

    @property
    def chunks(self) -> list[tuple[str, int]]:
        """(doc_id, chunk) of every refilled chunk, in library order."""
        return [(d, c) for d, p in zip(self.doc_ids, self.plans) for c in p.chunks]


def sink_mask(doc: DocState) -> torch.Tensor:
    """[n_l1] True for the attend-set entries that are sinks (the chat template's start)."""
    return doc.l1_always.cpu() & (doc.l1_pos.cpu() < doc.layout.n_sink)


@dataclass
class Segment:
    """One document's part of a library's active cache: an optional header, then its entries."""

    doc: DocState
    layout: ActiveLayout  # the document's entries (the same for every layer), rope positions set
    header_ids: list[int] = field(default_factory=list)
    header_start: int = 0  # position of the header's first token


# A local layer of a document shown before the last one: no entries (its window is not the question's).
_NO_ENTRIES = LayerEntries(torch.empty(0, dtype=torch.long), [], [], torch.empty(0, dtype=torch.long),
                           torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))


@dataclass
class LibraryLayout:
    """The active cache of a library question at focus positions: the sinks of the first document
    shown (the chat template's start), then per document with chosen chunks its header and its L1 +
    chunk entries (without its own sinks), renumbered contiguously. With one document: that document's
    single-document layout, no header. Headers' KV is made by the engine (`Engine._header_kv`)."""

    mode: str
    n_tokens: int  # tokens of all documents
    prefix_doc: DocState  # the document whose sinks open the cache
    prefix: torch.Tensor  # [n_s] attend-set indices of those sinks (empty with one document)
    segments: list[Segment]
    local: list[bool] = field(default_factory=list)  # per layer: an unstored local layer of a hybrid model

    @classmethod
    def build(cls, plan: LibraryPlan, library: Library, n_layers: int,
              header_ids: Callable[[int, DocState], list[int]]) -> "LibraryLayout":
        """`header_ids(i, doc)`: the header of the i-th document shown (several documents only)."""
        multi = len(library.docs) > 1
        if multi and plan.mode != "focus":
            raise InputError("a question over several documents runs in focus mode (mode='focus')")
        shown = [(d, p) for d, p in zip(library.docs, plan.plans) if p.chunks]
        if plan.doc_scores is not None:  # by the locator's rank, the best last (nearest the question;
            # measured against the order the user named them: docs/algorithm.md)
            score = dict(zip((d.doc_id for d in library.docs), plan.doc_scores))
            shown.sort(key=lambda dp: score[dp[0].doc_id])  # stable: ties keep library order
        if not shown:  # nothing chosen (a policy with k = 0): the first document's L1 alone
            shown = [(library.docs[0], plan.plans[0])]
        if not multi:  # one document: its own layout, whatever the policy (token-level ones too)
            doc, p = shown[0]
            return cls(plan.mode, library.n_tokens, doc, torch.empty(0, dtype=torch.long),
                       [Segment(doc, ActiveLayout.build(p, doc, n_layers))])
        for _, p in shown:
            if p.tokens is not None:
                raise InputError("a question over several documents needs a chunk-level policy")
        prefix = sink_mask(shown[0][0]).nonzero().flatten()
        local = [not shown[0][0].is_stored(layer) for layer in range(n_layers)]
        first_stored = local.index(False)
        segments, at = [], int(prefix.numel())
        for i, (doc, p) in enumerate(shown):
            # a chunk made only of sinks would repeat the chat template's start mid-cache
            p = replace(p, chunks=[c for c in p.chunks if c * doc.chunk_size + doc.chunk_len(c) > doc.layout.n_sink])
            own = ActiveLayout.build(p, doc, n_layers)
            e = own.layers[first_stored]
            l1 = e.l1[~sink_mask(doc)[e.l1]]  # its sinks are the opening ones
            hdr = list(header_ids(i, doc))
            whole = [torch.arange(c * doc.chunk_size, c * doc.chunk_size + doc.chunk_len(c)) for c in e.chunks]
            pos = torch.cat([doc.l1_pos.cpu()[l1], *whole])
            order = pos.argsort()
            pos = pos[order]
            start = at + len(hdr)
            entries = LayerEntries(l1, list(e.chunks), [], order, pos, torch.arange(start, start + pos.numel()))
            last = i == len(shown) - 1  # a local layer: the window of the document shown last, none of the others'
            layers = [(own.layers[layer] if last else _NO_ENTRIES) if local[layer] else entries
                      for layer in range(n_layers)]
            one = ActiveLayout(plan.mode, doc.n_tokens, doc.chunk_size, layers, list(e.chunks))
            segments.append(Segment(doc, one, hdr, at))
            at = start + pos.numel()
        out = cls(plan.mode, library.n_tokens, shown[0][0], prefix, segments, local)
        q0 = out.question_start
        for e in segments[-1].layout.layers:  # the window ends just before the question (as in one document)
            if e.window is not None:
                e.rope_positions = torch.cat([torch.arange(q0 - e.n_sinks, q0),
                                              torch.arange(q0 - (e.n - e.n_sinks), q0)])
        return out

    @property
    def n_header(self) -> int:
        return sum(len(s.header_ids) for s in self.segments)

    def is_local(self, layer: int) -> bool:
        """An unstored local layer of a hybrid model: no sinks or headers, the last document's window."""
        return bool(self.local) and self.local[layer]

    @property
    def n_active(self) -> list[int]:
        """Active entries per layer (sinks, headers and document entries; a local layer: its window)."""
        n_layers = len(self.segments[0].layout.layers)
        return [(0 if self.is_local(i) else int(self.prefix.numel()) + self.n_header)
                + sum(s.layout.layers[i].n for s in self.segments) for i in range(n_layers)]

    @property
    def question_start(self) -> int:
        if len(self.segments) == 1 and not self.prefix.numel():  # one document: its own layout decides
            return self.segments[0].layout.question_start
        # a local layer's sinks (local_sinks) share its window's positions, so they do not count
        return max((n - (self.segments[-1].layout.layers[i].n_sinks if self.is_local(i) else 0)
                    for i, n in enumerate(self.n_active)), default=0)

    def question_positions(self, n_question: int) -> torch.Tensor:
        return torch.arange(self.question_start, self.question_start + n_question)

    @property
    def kv_ratio(self) -> float:
        """Active entries / tokens of all documents, averaged over layers."""
        return sum(self.n_active) / len(self.n_active) / self.n_tokens

    @property
    def chunks_needed(self) -> dict[str, list[int]]:
        """doc_id -> chunks to fetch, in the order of the segments."""
        return {s.doc.doc_id: s.layout.chunks_needed for s in self.segments}

    def assemble(self, layer: int, chunk_layer: LibraryChunkLayer) -> list:
        """Per segment: (k pre-RoPE, v, rope positions) of its entries at `layer`, or None if it has none."""
        out = []
        for s in self.segments:
            def one(c: int, layer_: int, doc_id: str = s.doc.doc_id) -> torch.Tensor:
                return chunk_layer(c, layer_, doc_id)

            out.append(s.layout.assemble(layer, s.doc, one))
        return out

    def sources(self, library: Library) -> list[dict]:
        """[{doc_id, name, chunks}] of the documents whose chunks (read from L2) this cache holds, in
        library order."""
        held = {s.doc.doc_id: s.layout.chunks_needed for s in self.segments}
        return [{"doc_id": d.doc_id, "name": d.name, "chunks": list(held[d.doc_id])}
                for d in library.docs if held.get(d.doc_id)]

    @staticmethod
    def single_sources(doc: DocState, layout: ActiveLayout) -> list[dict]:
        """`sources` of a single-document question: the chunks its layout reads from L2."""
        return [{"doc_id": doc.doc_id, "name": doc.name, "chunks": list(layout.chunks_needed)}] if layout.chunks_needed else []

    def prefix_entries(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(k pre-RoPE, v) [n_kv_heads, n_s, head_dim] and positions [n_s] of the opening sinks (none on a
        hybrid model's local layers)."""
        if not self.prefix.numel() or self.is_local(layer):
            return None
        d = self.prefix_doc
        idx = self.prefix.to(d.l1_keys.device)
        s = d.slot(layer)
        return d.l1_keys[s][:, idx], d.l1_values[s][:, idx], torch.arange(idx.numel(), device=idx.device)


def resolve_library(store, ref: str) -> list[str]:
    """The document ids a user's reference names: "@NAME" (every document ingested with
    `collection=NAME`, oldest first) or "REF1,REF2,..." (each an id, a unique id prefix or a name)."""
    from acre_store import DocumentNotFound, resolve_doc_id

    ref = ref.strip()
    if ref.startswith("@"):
        name = ref[1:]
        metas = sorted((m for m in store.list() if m.extra.get("collection") == name), key=lambda m: (m.created, m.name))
        if not metas:
            raise DocumentNotFound(f"no document in collection {name!r} (ingest with --collection {name})")
        return [m.doc_id for m in metas]
    parts = [x.strip() for x in ref.split(",")]
    if any(not x for x in parts):
        raise InputError(f"empty document reference in {ref!r}")
    return [resolve_doc_id(store, x) for x in parts]


def is_library_ref(ref: str) -> bool:
    """True for a reference to several documents ("@NAME" or a comma-separated list)."""
    return ref.strip().startswith("@") or "," in ref
