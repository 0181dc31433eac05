"""The shape every chunk-level policy shares: locate (pass 1 + a locator) -> volume -> select.

`ChunkPolicy.plan` reads as the method's steps. Subclasses change one step each: `acre-l1` its
locator, `fixed-k` and the entropy policies their volume, `random` its choice of chunks.
"""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import torch

from .. import locator, volume
from ..library import Library, LibraryPlan
from ..model import AttnProbe
from ..pass1 import run_pass1
from ..plan import Plan
from .base import PlanContext, Policy


@dataclass
class ChunkPolicy(Policy):
    """Refill whole L2 chunks picked from a locator's distribution; keep L1 for the rest."""

    neighbors: int = 1  # each chosen chunk brings this many neighbours on each side
    mode: str = "focus"  # "exact" (original positions) | "focus" (renumbered contiguously)
    p_power: float = 2.0  # p ∝ score**p_power: sharpens p so its entropy separates one peak from spread
    # Over several documents a chunk's score sums its rows' evidence (locator.library_chunk_scores), a
    # flatter scale: p ∝ score**library_p_power. 8 chosen on probe libraries (seed 1; docs/results.md).
    library_p_power: float = 8.0
    # One document is scored by its index's best `locator_heads` heads (0: all). The index holds 6 (what a
    # library of 100 documents needs, where every head is used); a 5th head's second peaks raised the
    # coverage rule's k on single needles from 1 to 2-6 (docs/results.md, "A wider locator index").
    locator_heads: int = 4
    # Re-selection (`Engine.ask(reselect=N)`, `locate_more`): a chunk joins while the answer is decoded
    # when, with every token the active cache attends left out of the locator's softmax, an index head
    # still puts at least this share of one query row (a question or answer token) on one of its tokens.
    # Chosen on probe seeds (docs/results.md, "Re-selection during decoding"): with the needle attended,
    # single needles' best such share is 0.30-0.67; a multi-value fact left out of the plan scores 0.97-1.0.
    reselect_min: float = 0.9
    # Residual completion of the first plan: after the volume rule's chunks, the residual locator
    # (`locate_more`, the question alone) adds the chunks it still finds at `reselect_min`, before the
    # first token. Off by default; measured as `acre+complete` (docs/results.md).
    complete: bool = False
    # Distinct places (`volume.distinct_order`): a chunk that a chosen chunk's neighbours refill anyway is
    # passed over, so k counts places, not the two halves of one fact that straddles a boundary; the
    # coverage rule counts the mass of every chunk refilled. Off by default; measured as `acre+distinct` and,
    # with coverage 0.97, `acre+places` (docs/results.md, "Distinct places: multi-value recall at 32k":
    # more multi-value recall, fewer multi-key answers).
    distinct: bool = False
    # Score every index key as if it stood this many positions before the question (None: at its own
    # position; `locator.scoring_keys`). A fact far back then competes with a near one on its content
    # alone, as it does once focus mode refills it next to the question. Off by default; measured as
    # `acre+near` (docs/results.md, "One distance for every key").
    locator_distance: int | None = None
    # How the locator index scores a chunk (`locator.index_chunk_scores`): "max", the largest share any
    # (head, question token) puts on one of its tokens; "support", the sum over question tokens of each
    # token's best share on the chunk where that share is at least `support_min` (several question words
    # pointing at one place add up). "max" by default: measured as `acre+support` (docs/results.md, "Support:
    # the question's words that point at a chunk"), support wins multi-key and loses more elsewhere.
    # Re-selection and libraries keep their own rules.
    locator_score: str = "max"
    support_min: float = 0.2

    def __post_init__(self) -> None:
        self.check(isinstance(self.neighbors, int) and self.neighbors >= 0, "neighbors must be an integer >= 0")
        self.check_mode(self.mode)
        self.check(self.p_power > 0, "p_power must be > 0")
        self.check(self.library_p_power > 0, "library_p_power must be > 0")
        self.check(isinstance(self.locator_heads, int) and self.locator_heads >= 0,
                   f"locator_heads must be an integer >= 0 (0: every index head), got {self.locator_heads!r}")
        self.check(isinstance(self.reselect_min, (int, float)) and 0 < self.reselect_min <= 1,
                   f"reselect_min must lie in (0, 1], got {self.reselect_min!r}")
        self.check(isinstance(self.complete, bool), f"complete must be true or false, got {self.complete!r}")
        self.check(isinstance(self.distinct, bool), f"distinct must be true or false, got {self.distinct!r}")
        self.check(self.locator_distance is None or (isinstance(self.locator_distance, int)
                                                      and not isinstance(self.locator_distance, bool)
                                                      and self.locator_distance >= 0),
                   f"locator_distance must be an integer >= 0 or null, got {self.locator_distance!r}")
        self.check(self.locator_distance is None or type(self).locate is ChunkPolicy.locate,
                   f"locator_distance sets the locator index's scoring; {self.name} ranks chunks another way")
        self.check(self.locator_score in ("max", "support"),
                   f"locator_score must be 'max' or 'support', got {self.locator_score!r}")
        self.check(isinstance(self.support_min, (int, float)) and not isinstance(self.support_min, bool)
                   and 0 < self.support_min <= 1, f"support_min must lie in (0, 1], got {self.support_min!r}")
        self.check(self.locator_score == "max" or type(self).locate is ChunkPolicy.locate,
                   f"locator_score sets the locator index's scoring; {self.name} ranks chunks another way")

    def plan(self, ctx: PlanContext) -> Plan:
        p = self.locate(ctx)  # pass 1 + the locator: a distribution over chunks
        k = self.volume(p)  # how many chunks this question gets
        top = self.choose(ctx, p, k)
        chunks = volume.with_neighbors(top, self.neighbors, p.numel())
        if self.complete:  # the residual locator on the same pass 1 (index policies; others run their own)
            cap = volume.budget_k(getattr(self, "kv_budget", None), p.numel(), 0)
            chunks = sorted(set(chunks) | set(self.locate_more(ctx, set(chunks), cap)))
        return Plan(chunks, use_l1=True, mode=self.mode, entropy=volume.normalized_entropy(p), k=k, p=p)

    def index_layers(self, doc) -> tuple[int, ...]:
        """The layers of the index's best `locator_heads` heads: where pass 1 records the queries the
        locator index is scored with (the key of `PlanContext.probes`)."""
        return tuple(sorted({layer for layer, _ in doc.index_heads[:self.locator_heads or None]}))

    def index_probe(self, ctx: PlanContext) -> tuple[AttnProbe, int | None]:
        """Pass 1's record of the question's queries at the layers of the index's best `locator_heads`
        heads, and that head count (None: every head). Run once per question (kept in `ctx.probes`; a
        caller may put one there, as re-selection does with its incremental pass 1)."""
        n_heads = self.locator_heads or None
        layers = self.index_layers(ctx.doc)
        if layers not in ctx.probes:
            ctx.probes[layers] = run_pass1(ctx.model, ctx.doc, ctx.q_ids, list(layers), want_queries=True,
                                           want_probs=False, runner=ctx.pass1)
        return ctx.probes[layers], n_heads

    def locate(self, ctx: PlanContext) -> torch.Tensor:
        """p [n_chunks] from the locator index: every document token's key at the index's best
        `locator_heads` heads scored against the question's queries there (`index_probe`)."""
        probe, n_heads = self.index_probe(ctx)
        scores = locator.index_chunk_scores(ctx.doc, probe, ctx.cfg.n_rep, ctx.cfg.head_dim, n_heads,
                                            distance=self.locator_distance, ropes=ctx.model.ropes,
                                            score=self.locator_score, support_min=self.support_min)
        return locator.to_distribution(scores, self.p_power)

    def locate_more(self, ctx: PlanContext, have: set[int], cap: int) -> list[int]:
        """Re-selection: the chunks the query (`ctx.q_ids`: the question and the answer so far) still needs
        beyond `have` (the chunks refilled so far), each with its neighbours, while at most `cap` chunks
        are held in all. The residual locator (`locator.index_chunk_scores(exclude=)`) scores the index
        with every attended token left out of the softmax; its best chunk joins while it scores at least
        `reselect_min`, then is left out in turn (a second missing fact then gets the share the two had
        split); at most `k_max` (6 without one) chunks join per call. Reads the locator index whatever
        the policy's own locator. [] when nothing new is needed."""
        doc, cfg = ctx.doc, ctx.cfg
        probe, n_heads = self.index_probe(ctx)
        have, new = set(have), []
        keys = locator.scoring_keys(doc, n_heads, self.locator_distance, ctx.model.ropes)  # once per call
        for _ in range(getattr(self, "k_max", 6)):
            exclude = locator.chunk_tokens(doc, have)
            scores = locator.index_chunk_scores(doc, probe, cfg.n_rep, cfg.head_dim, n_heads, exclude=exclude,
                                                keys=keys)
            c = int(scores.argmax())
            add = [x for x in volume.with_neighbors([c], self.neighbors, doc.n_chunks) if x not in have]
            if float(scores[c]) < self.reselect_min or not add or len(have) + len(add) > cap:
                break
            have.update(add)
            new += add
        return sorted(new)

    def plan_library(self, model, library: Library, q_ids: torch.Tensor) -> LibraryPlan:
        """The same steps over several documents: one pass 1 (over the first document's attend set) gives
        the question's queries; they score every document's locator index on one scale; the volume rule
        and the choice run on the joint distribution over all chunks; neighbours stay in their document."""
        if len(library.docs) == 1:
            return super().plan_library(model, library, q_ids)
        self.check(type(self).locate is ChunkPolicy.locate,
                   "a question over several documents needs the locator index (its locator reads one document)")
        self.check(self.mode == "focus", "a question over several documents runs in focus mode")
        self.check(not self.distinct, "distinct places are for a question over one document")
        self.check(self.locator_distance is None, "locator_distance is for a question over one document")
        docs, cfg = library.docs, model.cfg
        probe = run_pass1(model, docs[0], q_ids, list(self.library_layers(library)), want_queries=True,
                          want_probs=False)
        scores = locator.library_chunk_scores(docs, probe, cfg.n_rep, cfg.head_dim, model.rope.inv_freq)
        p = locator.to_distribution(torch.cat(scores), self.library_p_power)
        k = self.volume(p)
        top = self.choose(PlanContext(model, docs[0], q_ids), p, k)
        starts = torch.tensor([s.numel() for s in scores]).cumsum(0)  # [n_docs] end of each document's chunks
        plans, best = [], []
        for i, (doc, s) in enumerate(zip(docs, scores)):
            lo = int(starts[i]) - s.numel()
            mine = [c - lo for c in top if lo <= c < int(starts[i])]
            chunks = volume.with_neighbors(mine, self.neighbors, s.numel())
            plans.append(Plan(chunks, use_l1=True, mode=self.mode, p=p[lo:int(starts[i])]))
            best.append(float(p[lo:int(starts[i])].max()))
        return LibraryPlan([d.doc_id for d in docs], plans, self.mode, volume.normalized_entropy(p), k, p, best)

    def library_layers(self, library: Library) -> tuple[int, ...]:
        """Where pass 1 of a question over a library records its queries: one document, the layers of its
        index's best `locator_heads` heads (`index_layers`); several, the layers of every index head."""
        if len(library.docs) == 1:
            return self.index_layers(library.docs[0])
        return tuple(sorted({layer for layer, _ in library.docs[0].index_heads}))

    def locate_more_library(self, ctx: PlanContext, library: Library, have: list[set[int]],
                            cap: int) -> list[tuple[int, int]]:
        """`locate_more` over a library: (document index, chunk) pairs the query still needs beyond `have`
        (per document, the chunks refilled so far), best first, at most `cap` chunks held in all. `ctx` is
        the query on the first document, its pass 1 at `library_layers` in `ctx.probes`. Over one document
        it is that document's `locate_more`; over several the residual locator scores every document's
        index on one scale (`locator.library_chunk_scores(exclude=, rule="max")`: a shown document's
        attended tokens left out, the best row's share), and its best chunk joins while it scores
        `reselect_min`; a document without chosen chunks enters the cache with it."""
        if len(library.docs) == 1:
            return [(0, c) for c in self.locate_more(ctx, have[0], cap) if c not in have[0]]
        docs, model = library.docs, ctx.model
        cfg = model.cfg
        probe = ctx.probes[self.library_layers(library)]
        have, new = [set(h) for h in have], []
        starts = [0, *itertools.accumulate(d.n_chunks for d in docs)]
        for _ in range(getattr(self, "k_max", 6)):
            exclude = [locator.attended_tokens(d, h) if h else None for d, h in zip(docs, have)]
            flat = torch.cat(locator.library_chunk_scores(docs, probe, cfg.n_rep, cfg.head_dim, model.rope.inv_freq,
                                                          exclude=exclude, rule="max"))
            j = int(flat.argmax())
            i = bisect.bisect_right(starts, j) - 1
            c = j - starts[i]
            add = [x for x in volume.with_neighbors([c], self.neighbors, docs[i].n_chunks) if x not in have[i]]
            if float(flat[j]) < self.reselect_min or not add or sum(map(len, have)) + len(add) > cap:
                break
            have[i].update(add)
            new += [(i, x) for x in add]
        return new

    def volume(self, p: torch.Tensor) -> int:
        raise NotImplementedError

    def choose(self, ctx: PlanContext, p: torch.Tensor, k: int) -> list[int]:
        """The k most probable chunks (`distinct`: the k most probable places)."""
        if self.distinct:
            return volume.distinct_order(p, self.neighbors, k)
        return p.topk(min(k, p.numel())).indices.tolist()


@dataclass
class BoundedVolumePolicy(ChunkPolicy):
    """A volume rule bounded by `k_min`..`k_max` and by a KV budget: `kv_budget` is the share of the
    document (0 < b <= 1) the refilled chunks, neighbours included, may take (None: only k_max bounds)."""

    k_min: int = 1
    k_max: int = 3
    kv_budget: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(isinstance(self.k_min, int) and isinstance(self.k_max, int) and 1 <= self.k_min <= self.k_max,
                   f"need integers 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        self.check(self.kv_budget is None or (isinstance(self.kv_budget, (int, float)) and 0 < self.kv_budget <= 1),
                   f"kv_budget must be a share of the document in (0, 1], got {self.kv_budget!r}")

    def volume(self, p: torch.Tensor) -> int:
        return min(self.rule_k(p), volume.budget_k(self.kv_budget, p.numel(), self.neighbors))

    def rule_k(self, p: torch.Tensor) -> int:
        raise NotImplementedError


@dataclass
class EntropyVolumePolicy(BoundedVolumePolicy):
    """k from the entropy of p: `k_min + (k_max - k_min) * H(p) / log(n_chunks)` (`volume.py`)."""

    def rule_k(self, p: torch.Tensor) -> int:
        return volume.entropy_to_k(volume.normalized_entropy(p), self.k_min, self.k_max, p.numel())


@dataclass
class CoverageVolumePolicy(BoundedVolumePolicy):
    """k = the fewest top chunks holding `coverage` of p (`volume.coverage_to_k`): one peak -> one chunk,
    evidence in several places -> as many chunks as places, up to k_max and the KV budget."""

    # Chosen on probe seeds (tools/tune_volume.py; docs/results.md, "Adaptive volume"): p ∝ score**4 and
    # 90% coverage give one chunk to single needles and 4-5 to multi-value / multi-query questions; k_max 6.
    p_power: float = 4.0
    k_max: int = 6
    coverage: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(isinstance(self.coverage, (int, float)) and 0 < self.coverage <= 1,
                   f"coverage must lie in (0, 1], got {self.coverage!r}")

    def rule_k(self, p: torch.Tensor) -> int:
        if self.distinct:
            return volume.coverage_places_k(p, self.coverage, self.k_min, self.k_max, self.neighbors)
        return volume.coverage_to_k(p, self.coverage, self.k_min, self.k_max)
