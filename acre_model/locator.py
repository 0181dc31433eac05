"""The locators: which L2 chunks does a question need?

A locator turns what pass 1 (`pass1.py`) saw into a distribution `p` over the document's chunks:

- `index` (default): the question's queries at the calibrated retrieval heads against the keys of
  *every* document token at those heads (the locator index; one document is scored at its best
  `locator_heads`, a policy knob). Each chunk scores the largest attention
  probability that any (head, question token) puts on one of its tokens (the max rule: a needle is one
  sharp peak; summing dilutes it among many weak matches). The opt-in `support` rule (`score="support"`)
  adds up, over the question's tokens, each token's best share in the chunk (over heads) where it is at
  least `support_min`: a chunk several question words point at sharply outranks one a single word (often
  a common one) points at. Over several documents
  (`library_chunk_scores`) each row is one softmax over every document's index keys and a chunk sums
  its rows' evidence (see there).
- `l1` (the seed's locator, kept as an ablation): attention mass of the question on the attend set,
  summed per chunk through the proxy map, at the middle layers.
"""
from __future__ import annotations

import itertools
import math

import torch

from .doc_state import DocState
from .model import AttnProbe
from .rope import Rope


def max_per_chunk(x: torch.Tensor, n_tokens: int, chunk_size: int) -> torch.Tensor:
    """x [..., n_tokens] -> [..., n_chunks] max over each chunk's tokens (one row or many)."""
    n_chunks = -(-n_tokens // chunk_size)
    pad = n_chunks * chunk_size - n_tokens
    if pad:
        x = torch.cat([x, x.new_full((*x.shape[:-1], pad), float("-inf"))], -1)
    return x.view(*x.shape[:-1], n_chunks, chunk_size).amax(-1)


def head_queries(probe: AttnProbe, layer: int, g: int, n_rep: int, head_dim: int) -> torch.Tensor:
    """[n_rep * T, D] the rotated queries of KV head `g`'s group at `layer`, every question token."""
    return probe.queries[layer][g * n_rep:(g + 1) * n_rep].reshape(-1, head_dim)


def index_chunk_scores(doc: DocState, probe: AttnProbe, n_rep: int, head_dim: int,
                       n_heads: int | None = None, exclude: torch.Tensor | None = None,
                       distance: int | None = None, ropes: list[Rope] | None = None,
                       keys: list[torch.Tensor] | None = None, score: str = "max",
                       support_min: float = 0.2) -> torch.Tensor:
    """Chunk scores [n_chunks] from the locator index (the max rule, or `score="support"`), at its first
    `n_heads` heads (the index is in calibration order, best first; None: every head). Pass 1 must have
    recorded those heads' layers.

    `exclude` [n_tokens] bool (the residual locator, re-selection's): those tokens, and the sinks and
    recent window, are left out of each row's softmax, so a row's probability goes to the tokens the
    active cache does not attend yet; a token that matches as well as one already attended then takes
    the share the attended one had.

    `distance` (with `ropes`, the model's per-layer RoPE): every key is scored as if it stood `distance`
    positions before the question (`scoring_keys`) instead of at its own position, so a fact far back
    in the document competes with a near one on its content alone (focus mode refills it next to the
    question anyway). None: each key at its own position. `keys`: those heads' keys from `scoring_keys`
    (a caller scoring one question several times turns them once); None: built here.

    `score="support"`: per question token, its largest share on each chunk over the heads (and the query
    heads of a group); a chunk scores the sum over question tokens of those shares that reach `support_min`
    (`support_scores`). "max": the largest share of any row."""
    if score not in ("max", "support"):
        raise ValueError(f"score must be 'max' or 'support', got {score!r}")
    if keys is None:
        keys = scoring_keys(doc, n_heads, distance, ropes)
    always = doc.l1_pos[doc.l1_always]
    if exclude is not None:
        exclude = exclude.clone()
        exclude[always] = True
    best = None
    for (layer, g), k in zip(doc.index_heads[:n_heads], keys):
        q = head_queries(probe, layer, g, n_rep, head_dim)
        logits = q @ k.T / math.sqrt(head_dim)
        probs = logits.softmax(-1) if exclude is None else softmax_mass(logits, exclude)
        # rows are (query head of the group, question token): "max" keeps the best row, "support" the best
        # row of each question token
        probs = probs.amax(0) if score == "max" else probs.view(n_rep, -1, doc.n_tokens).amax(0)
        best = probs if best is None else torch.maximum(best, probs)
    # Sinks and the recent window are always attended: a chunk earns refill only by its other tokens
    # (attention sinks would otherwise win every ranking).
    best[..., always] = 0.0
    chunks = max_per_chunk(best, doc.n_tokens, doc.chunk_size)
    return chunks if score == "max" else support_scores(chunks, support_min)


# the max rule's share, scaled by this, breaks support's ties: it is below any support (>= support_min, 0.2 by
# default) by far, so it only orders the chunks no question token points at sharply (all at 0 otherwise)
SUPPORT_TIE = 1e-3


def support_scores(shares: torch.Tensor, support_min: float) -> torch.Tensor:
    """shares [n_question_tokens, n_chunks] (each token's best share on each chunk) -> [n_chunks]: the sum of
    the shares that reach `support_min`. A token whose attention is spread (no share reaches it) adds
    nothing; several tokens pointing at one chunk add up. Chunks with equal sums (typically 0: no token points
    at them sharply) keep the max rule's order (`SUPPORT_TIE`)."""
    return (shares * (shares >= support_min)).sum(0) + SUPPORT_TIE * shares.amax(0)


def scoring_keys(doc: DocState, n_heads: int | None = None, distance: int | None = None,
                 ropes: list[Rope] | None = None) -> list[torch.Tensor]:
    """The keys the locator scores at the index's first `n_heads` heads: as stored (rotated at their own
    positions), or with `distance` (and `ropes`, the model's per-layer RoPE) turned to stand `distance`
    positions before the question (`distance_turn`, one table per RoPE)."""
    if doc.index_keys is None or not doc.index_heads:
        raise ValueError(f"document {doc.doc_id[:12]} has no locator index (ingested without calibration)")
    heads = doc.index_heads[:n_heads]
    if distance is None:
        return [doc.index_keys[h] for h in range(len(heads))]
    if ropes is None:
        raise ValueError("scoring keys at one distance needs the model's RoPE (ropes=)")
    turns = {}
    for layer, _ in heads:
        if id(ropes[layer]) not in turns:
            turns[id(ropes[layer])] = distance_turn(ropes[layer], doc.n_tokens, distance, doc.index_keys)
    return [Rope.apply(doc.index_keys[h], *turns[id(ropes[layer])]) for h, (layer, _) in enumerate(heads)]


def distance_turn(rope: Rope, n_tokens: int, distance: int, like: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n_tokens, D] (dtype and device of `like`) that turn keys rotated at their own positions j
    to position `n_tokens - distance`: the question's first token (at `n_tokens` in pass 1) then sees every
    key `distance` positions back. RoPE rotations compose, so key j turns by `n_tokens - distance - j`; a
    negative turn (the last `distance` tokens) reads the table at its size with sin's sign flipped."""
    turn = (n_tokens - distance) - torch.arange(n_tokens)
    cos, sin = rope.cos_sin(turn.abs(), like.dtype)
    sign = turn.sign().to(sin.device, like.dtype)[:, None]
    return cos.to(like.device), (sin * sign).to(like.device)


def attended_tokens(doc: DocState, chunks) -> torch.Tensor:
    """[n_tokens] bool: what an active cache that refills `chunks` of `doc` attends at full detail: their
    tokens, the sinks and the recent window (the residual locator's `exclude`)."""
    mask = chunk_tokens(doc, chunks)
    mask[doc.l1_pos[doc.l1_always].to(mask.device)] = True
    return mask


def chunk_tokens(doc: DocState, chunks) -> torch.Tensor:
    """[n_tokens] bool: the tokens of the given chunks."""
    mask = torch.zeros(doc.n_chunks * doc.chunk_size, dtype=torch.bool, device=doc.index_keys.device)
    for c in chunks:
        mask[c * doc.chunk_size:(c + 1) * doc.chunk_size] = True
    return mask[:doc.n_tokens]


def shift_queries(q: torch.Tensor, delta: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """q [..., D] (rotated at some positions) rotated `delta` positions further (delta may be negative):
    RoPE rotations compose, so this equals rotating the unrotated queries at their positions + delta."""
    if delta == 0:
        return q
    f = delta * inv_freq.to(q.device, torch.float64)
    emb = torch.cat([f, f])
    return Rope.apply(q, emb.cos().to(q.dtype), emb.sin().to(q.dtype))


def library_chunk_scores(docs: list[DocState], probe: AttnProbe, n_rep: int, head_dim: int,
                         inv_freq: torch.Tensor | None = None, exclude: list[torch.Tensor | None] | None = None,
                         rule: str = "sum") -> list[torch.Tensor]:
    """Chunk scores of several documents on one scale: [n_chunks_d] per document.

    The queries of one pass 1 (over the first document, at positions after it) score every document's
    index keys, moved (`inv_freq` given) to the positions right after *that* document, so each document
    sees the question at the distance a single-document ask would. Each (head, question token) row is
    one softmax over the tokens of *all* documents: a token that matches the question only in one
    document keeps its probability, while a phrase every document shares (the same form of fact in
    each) is split among them. Sinks are left out of that softmax and the recent window is scored (it
    is attended only if its document is shown).

    Over several documents a chunk's score *adds up* its evidence: per head, the sum over the question's
    rows of the row's largest probability in the chunk; then the best head. A fact whose key shares one
    word with another document's key ("jolly-otter", "jolly-kettle") wins on the rows of its other words,
    where one row's maximum (the single-document max rule) would tie them (measured on probe libraries:
    docs/results.md, "Library"). With one document this is `index_chunk_scores`: the max rule.

    The residual locator of re-selection over a library: `exclude`, per document None or [n_tokens] bool,
    leaves those tokens (what the active cache attends already) out of every row's softmax, and
    `rule="max"` scores a chunk by its best row's share (the max rule, on which `reselect_min` is set)."""
    if rule not in ("sum", "max"):
        raise ValueError(f"rule must be 'sum' or 'max', got {rule!r}")
    for doc in docs:
        if doc.index_keys is None or not doc.index_heads:
            raise ValueError(f"document {doc.doc_id[:12]} has no locator index (ingested without calibration)")
    heads = docs[0].index_heads

    if len(docs) == 1:
        return [index_chunk_scores(docs[0], probe, n_rep, head_dim, exclude=exclude[0] if exclude else None)]
    # The documents share a chunk size (a `Library` checks it). One buffer of logits [rows, tokens] per head,
    # each document padded to whole chunks: padding and sinks hold -inf (probability 0 in the joint
    # softmax), so the chunks' maxima are one view away.
    cs, n0 = docs[0].chunk_size, docs[0].n_tokens
    n_chunks = [-(-d.n_tokens // cs) for d in docs]
    offsets = [0, *itertools.accumulate(n * cs for n in n_chunks)]
    device = docs[0].index_keys.device
    total = torch.zeros(offsets[-1] // cs, device=device)
    logits = None  # one buffer for every head, worked in place (fresh 50 MB buffers cost page faults)
    for h, (layer, g) in enumerate(heads):
        q = head_queries(probe, layer, g, n_rep, head_dim) / math.sqrt(head_dim)
        if logits is None:
            logits = torch.empty((q.shape[0], offsets[-1]), device=device, dtype=q.dtype)
        for i, (d, lo, hi) in enumerate(zip(docs, offsets, offsets[1:])):
            qd = q if inv_freq is None else shift_queries(q, d.n_tokens - n0, inv_freq)
            torch.matmul(qd, d.index_keys[h].T, out=logits[:, lo:lo + d.n_tokens])
            logits[:, lo + d.n_tokens:hi] = float("-inf")  # the short last chunk's padding
            logits[:, lo:lo + d.layout.n_sink] = float("-inf")  # every document's sinks would take a share of every row
            if exclude is not None and exclude[i] is not None:
                logits[:, lo:lo + d.n_tokens].masked_fill_(exclude[i], float("-inf"))
        # the softmax per row (question token) over every document's tokens, in place
        logits.sub_(logits.amax(-1, keepdim=True)).exp_()
        probs_max = (logits.view(q.shape[0], -1, cs).amax(-1) / logits.sum(-1, keepdim=True)).nan_to_num_(0.0)
        per_chunk = probs_max.sum(0) if rule == "sum" else probs_max.amax(0)
        total = torch.maximum(total, per_chunk.to(total.dtype))
    return list(total.split(n_chunks))


def l1_chunk_scores(doc: DocState, probe: AttnProbe) -> torch.Tensor:
    """Seed rule: attention mass on attend-set entries, summed per chunk (sinks and recent excluded)."""
    mass = torch.zeros(doc.n_l1, device=doc.l1_pos.device)
    for p in probe.probs.values():
        mass += p[..., : doc.n_l1].sum((0, 1)).to(mass.device)  # over heads and question tokens
    mass = mass.masked_fill(doc.l1_always, 0.0)
    scores = torch.zeros(doc.n_chunks, device=mass.device)
    scores.index_add_(0, doc.l1_chunk, mass)
    return scores


def to_distribution(scores: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Chunk scores -> distribution p ∝ score**power (power > 1 sharpens: a lone peak over a flat
    background of weak matches then has low entropy, spread attention keeps a high one)."""
    s = scores.clamp_min(0).double() ** power
    total = s.sum()
    if total <= 0:
        return torch.full_like(s, 1.0 / s.numel())
    return s / total


def attended_anyway(doc: DocState) -> torch.Tensor:
    """[n_chunks] bool: chunks all of whose tokens are sink or recent entries (always attended, so a
    refill of them adds nothing; the peers' rankings leave them out)."""
    always = torch.zeros(doc.n_chunks * doc.chunk_size, dtype=torch.bool, device=doc.l1_pos.device)
    always[doc.l1_pos[doc.l1_always]] = True
    always[doc.n_tokens:] = True  # the short last chunk's padding
    return always.view(doc.n_chunks, doc.chunk_size).all(-1)


def softmax_mass(logits: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis with the excluded entries left out (their share 0): the attention share
    each candidate would get if those logits were the attention's."""
    return logits.masked_fill(excluded, float("-inf")).softmax(-1).nan_to_num(0.0)
