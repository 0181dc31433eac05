"""Planting: a haystack of a given token length with sentences at given depths, and `fit_length`.

Lengths: `tokenize` is any callable `str -> list` (only the length is used). Each haystack sentence is
tokenized once, with its separator; the number of sentences is found by bisection on the running sums,
then the whole document is tokenized once to check, and the sum target is corrected if the tokenizer
does not add up (a BPE merge across a boundary, a BOS added per call). The result is within
`tolerance` (default 1%) of `n_tokens` for any realistic tokenizer.

Depth: a planted sentence goes to the sentence boundary whose haystack-token offset is nearest to
`depth * haystack_tokens`; 0 is the very start of the document, 1 the very end.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from .haystack import HaystackStream
from .tokenizers import Tokenize


@dataclass
class Planted:
    """A haystack with sentences planted in it."""

    text: str
    spans: list[tuple[int, int]]   # char span of each planted sentence, in the order given
    n_tokens: int                  # len(tokenize(text))
    token_depths: list[float]      # haystack-token offset of each plant / haystack tokens, in [0, 1]


def _join(units: Sequence[tuple[str, str]], plants: dict[int, list[tuple[int, str]]]):
    """The document text from haystack `units` and `plants` by boundary, and the span of each plant."""
    parts: list[str] = []
    spans: dict[int, tuple[int, int]] = {}
    pos = 0

    def emit(sep: str, s: str) -> tuple[int, int]:
        nonlocal pos
        if not parts:
            sep = ""
        elif not sep:
            sep = " "
        parts.append(sep)
        parts.append(s)
        start = pos + len(sep)
        pos = start + len(s)
        return start, pos

    for b in range(len(units) + 1):
        for idx, s in plants.get(b, ()):
            spans[idx] = emit(" ", s)
        if b < len(units):
            emit(*units[b])
    return "".join(parts), [spans[i] for i in range(len(spans))]


def plant_sentences(tokenize: Tokenize, n_tokens: int, plants: Sequence[tuple[float, str]],
                    rng: random.Random, haystack: str = "prose", tolerance: float = 0.01) -> Planted:
    """Build a haystack of about `n_tokens` tokens (plants included) with each `(depth, sentence)` of
    `plants` at the sentence boundary nearest to `depth`. Plants at the same boundary keep their order.
    """
    for d, _ in plants:
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"depth {d} outside [0, 1]")
    if n_tokens < 1:
        raise ValueError("n_tokens must be positive")
    stream = HaystackStream(haystack, rng, tokenize)
    plant_tokens = sum(len(tokenize(" " + s)) for _, s in plants)
    target = n_tokens - plant_tokens
    best = None
    for _ in range(6):
        m = stream.count_for(target)
        hay = stream.cum[m]
        by_boundary: dict[int, list[tuple[int, str]]] = {}
        depths = []
        for idx, (d, s) in enumerate(plants):
            b = stream.boundary_near(d * hay, m)
            by_boundary.setdefault(b, []).append((idx, s))
            depths.append(stream.cum[b] / hay if hay else 0.0)
        text, spans = _join(stream.units[:m], by_boundary)
        n = len(tokenize(text))
        if best is None or abs(n - n_tokens) < abs(best.n_tokens - n_tokens):
            best = Planted(text, spans, n, depths)
        if abs(n - n_tokens) <= tolerance * n_tokens:
            break
        target += n_tokens - n
    return best


def fit_length(build: Callable[[int], str], tokenize: Tokenize, n_tokens: int, units_guess: int,
               tolerance: float = 0.01, max_iter: int = 8) -> tuple[str, int, int]:
    """For documents made of countable units (list entries, words) where `build(units)` is deterministic:
    find `units` so that `len(tokenize(build(units)))` is within `tolerance` of `n_tokens`, rescaling by
    the measured tokens per unit. Returns `(text, units, n_tokens_measured)`, the closest one tried."""
    units = max(1, units_guess)
    best: tuple[str, int, int] | None = None
    tried: set[int] = set()
    for _ in range(max_iter):
        tried.add(units)
        text = build(units)
        n = len(tokenize(text))
        if best is None or abs(n - n_tokens) < abs(best[2] - n_tokens):
            best = (text, units, n)
        if abs(n - n_tokens) <= tolerance * n_tokens:
            break
        nxt = max(1, round(units * n_tokens / max(n, 1)))
        if nxt in tried:
            nxt = max(1, units + (1 if n < n_tokens else -1))
            if nxt in tried:
                break
        units = nxt
    return best
