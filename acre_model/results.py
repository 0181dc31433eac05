"""Typed results at the engine's boundary: what `generate`, `ingest`, `prepare` and `ask` return."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .active_layout import ActiveLayout
from .chunk_fetcher import FetchStats
from .doc_state import DocState
from .kv_cache import KVCache
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
class Prepared:
    """A question run over its active cache (pass 2 done), ready to decode."""

    policy: Policy
    doc: DocState
    plan: Plan
    layout: ActiveLayout
    cache: KVCache  # document entries of every layer, then the question's
    logits: torch.Tensor  # [vocab] of the first answer token
    fetch: FetchStats
    n_question: int  # question tokens in the cache
    q_ids: torch.Tensor | None = None  # [n_question] the question's ids (re-selection re-runs them)


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
    reselected_chunks: list = field(default_factory=list)  # chunks re-selection added while decoding

    def to_dict(self) -> dict:
        return asdict(self)
