"""Typed results at the engine's boundary: what `generate`, `ingest`, `prepare` and `ask` return."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .active_layout import ActiveLayout
from .chunk_fetcher import ChunkFetcher, FetchStats
from .doc_state import DocState
from .kv_cache import KVCache
from .model import BatchItem, LayerHook
from .library import Library, LibraryLayout, LibraryPlan
from .plan import Plan
from .policies import Policy


@dataclass
class Generation:
    text: str
    tokens: list[int]
    n_prompt_tokens: int
    ttft_s: float
    total_s: float
    ms_per_token: float
    stopped: bool


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
        return asdict(self)


@dataclass
class Planned:
    """A question through steps 1-5 of `Engine.prepare` (`Engine.plan_question`): its plan, layout and
    cache, with the refill of its chunks already running. Pass 2 (`Engine.run_pass2`) is still to run;
    a planned question that will not run must be `abandon`ed (stops and joins its refill)."""

    policy: Policy
    doc: DocState | Library
    plan: Plan | LibraryPlan
    layout: ActiveLayout | LibraryLayout
    cache: KVCache
    q_ids: torch.Tensor
    fetcher: ChunkFetcher
    positions: torch.Tensor  # the question's positions
    install: LayerHook  # installs a layer's active entries (waiting for its refilled chunks) before it runs
    sources: list = field(default_factory=list)  # as `Prepared.sources`

    def pass2_item(self) -> BatchItem:
        """The question's pass 2 as an item of `LlamaModel.forward_batch`."""
        return BatchItem(self.q_ids, self.cache, self.positions, self.install)

    def abandon(self) -> None:
        self.fetcher.finish(failed=True)


@dataclass
class Prepared:
    """A question run over its active cache (pass 2 done), ready to decode."""

    policy: Policy
    doc: DocState | Library  # a Library for a question over several documents
    plan: Plan | LibraryPlan
    layout: ActiveLayout | LibraryLayout
    cache: KVCache  # document entries of every layer, then the question's
    logits: torch.Tensor  # [vocab] of the first answer token
    fetch: FetchStats
    q_ids: torch.Tensor  # [n_question] the question's ids, in the cache after the document (re-selection re-runs them)
    sources: list = field(default_factory=list)  # [{doc_id, name, chunks}] of the documents with refilled chunks

    @property
    def n_question(self) -> int:
        return len(self.q_ids)


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
    finish_reason: str = "length"  # "stop": a stop token or stop string ended it; "length": max_new_tokens
    # The documents whose chunks were refilled: [{"doc_id", "name", "chunks"}]. Over a library, `doc_id`
    # holds every id (comma-separated) and `refilled_chunks` (doc_id, chunk) pairs.
    sources: list = field(default_factory=list)
    reselected_chunks: list = field(default_factory=list)  # chunks re-selection added while decoding

    def to_dict(self) -> dict:
        return asdict(self)
