"""What every KV policy shares: its inputs (`AskContext`), its output (`Plan`) and the registry.

A policy only decides *which* document entries the answer attends to; the engine fetches, assembles
and runs them. Chunk-level policies name L2 chunks (plus, optionally, the L1 entries of the rest);
token-level baselines name tokens per layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from .. import locator as loc
from ..doc_state import DocState


@dataclass
class AskParams:
    """Knobs of one question. Defaults are the measured best (docs/algorithm.md)."""

    k_min: int = 1
    k_max: int = 3
    neighbors: int = 1
    mode: str = "focus"  # "exact" (original positions) | "focus" (renumbered contiguously)
    p_power: float = 2.0  # p ∝ score**p_power: sharpens p so its entropy separates one peak from spread
    budget: float = 0.15  # target KV ratio of the token-level baselines
    fixed_k: int = 2  # the `fixed-k` ablation: acre's measured mean k (1.9), so both spend the same KV
    seed: int = 0
    l1_layers: tuple[int, ...] | None = None  # layers of the l1 locator (None: the middle 40%)

    def __post_init__(self) -> None:
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        if self.neighbors < 0:
            raise ValueError("neighbors must be >= 0")
        if self.mode not in ("exact", "focus"):
            raise ValueError(f"mode must be 'exact' or 'focus', got {self.mode!r}")
        if self.p_power <= 0:
            raise ValueError("p_power must be > 0")
        if not 0 < self.budget <= 1:
            raise ValueError("budget (KV ratio) must be in (0, 1]")


@dataclass
class Plan:
    chunks: list[int]  # L2 chunks refilled in full
    use_l1: bool = True  # attend the L1 entries of chunks not refilled
    tokens: torch.Tensor | None = None  # [n_layers, n_tokens] bool: token-level selection
    mode: str = "exact"
    entropy: float | None = None
    k: int | None = None
    p: torch.Tensor | None = None  # chunk distribution the choice came from


@dataclass
class AskContext:
    doc: DocState
    q_ids: torch.Tensor
    model: object
    params: AskParams
    _pass1: dict = field(default_factory=dict)

    @property
    def cfg(self):
        return self.model.cfg

    def middle_layers(self) -> list[int]:
        if self.params.l1_layers is not None:
            return list(self.params.l1_layers)
        L = self.cfg.num_hidden_layers
        return list(range(int(L * 0.4), int(L * 0.8)))

    def index_p(self) -> torch.Tensor:
        """Chunk distribution from the locator index (pass 1 queries at the retrieval heads)."""
        if "index" not in self._pass1:
            layers = sorted({l for l, _ in self.doc.index_heads})
            p1 = loc.run_pass1(self.model, self.doc, self.q_ids, layers, want_queries=True, want_probs=False)
            s = loc.index_chunk_scores(self.doc, p1, self.cfg.n_rep, self.cfg.head_dim)
            self._pass1["index"] = loc.to_distribution(s, self.params.p_power)
        return self._pass1["index"]

    def l1_p(self) -> torch.Tensor:
        """Chunk distribution of the seed's locator (attention mass on the attend set)."""
        if "l1" not in self._pass1:
            p1 = loc.run_pass1(self.model, self.doc, self.q_ids, self.middle_layers(), want_queries=False,
                               want_probs=True)
            self._pass1["l1"] = loc.to_distribution(loc.l1_chunk_scores(self.doc, p1), self.params.p_power)
        return self._pass1["l1"]


class Policy:
    """A KV policy: `plan()` picks what the answer attends to. Subclasses set `name`."""

    name: ClassVar[str] = ""

    def plan(self, ctx: AskContext) -> Plan:
        raise NotImplementedError

    @staticmethod
    def entropy_plan(ctx: AskContext, p: torch.Tensor, mode: str | None = None,
                     k: int | None = None) -> Plan:
        """Top-k chunks of p, k from the entropy rule unless given, with neighbours."""
        prm = ctx.params
        h = loc.normalized_entropy(p)
        if k is None:
            k = loc.entropy_to_k(h, prm.k_min, prm.k_max, p.numel())
        top = p.topk(min(k, p.numel())).indices.tolist()
        chunks = loc.with_neighbors(top, prm.neighbors, p.numel())
        return Plan(chunks, use_l1=True, mode=mode or prm.mode, entropy=h, k=k, p=p)


REGISTRY: dict[str, Callable[[], Policy]] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


def get_policy(name: str) -> Policy:
    from . import all_policies  # noqa: F401  (fills the registry)

    if name not in REGISTRY:
        raise KeyError(name)
    return REGISTRY[name]()


def policy_names() -> list[str]:
    from . import all_policies  # noqa: F401

    return list(REGISTRY)
