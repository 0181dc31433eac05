"""`HaystackStream`: the filler sentences of a document, generated lazily and tokenized once each.

Two haystacks, one generator of `(separator, sentence)` units each (`_UNITS`):
- `"prose"`: essay-like English from `ProseGenerator`, in paragraphs of 3-7 sentences. No digits and
  no sentence twice, and none of the words of keys, so a planted value or key occurs in the document
  exactly where it was planted.
- `"noise"`: RULER's repeated noise, "The grass is green. The sky is blue. ..." over and over.
"""
from __future__ import annotations

import bisect
import itertools
import random
from typing import Callable, Iterator

from .prose import ProseGenerator
from .tokenizers import Tokenize

NOISE_SENTENCES = (
    "The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
    "There and back again.",
)

Units = Iterator[tuple[str, str]]  # (separator before, sentence); the first separator is ""


def _prose_units(rng: random.Random) -> Units:
    prose = ProseGenerator(rng)
    for p in itertools.count():
        # NOTE: a paragraph's length is drawn when its first sentence is asked for, not before.
        for i in range(prose.paragraph_length()):
            sep = " " if i else "\n\n" if p else ""
            yield sep, prose.sentence()


def _noise_units(rng: random.Random) -> Units:
    for i in itertools.count():
        yield " " if i else "", NOISE_SENTENCES[i % len(NOISE_SENTENCES)]


_UNITS: dict[str, Callable[[random.Random], Units]] = {"prose": _prose_units, "noise": _noise_units}
HAYSTACKS = tuple(_UNITS)


class HaystackStream:
    """Haystack sentences with their separators and running token counts."""

    def __init__(self, kind: str, rng: random.Random, tokenize: Tokenize):
        if kind not in _UNITS:
            raise ValueError(f"unknown haystack {kind!r}; expected one of {HAYSTACKS}")
        self.kind, self.tokenize = kind, tokenize
        self._source = _UNITS[kind](rng)
        self.units: list[tuple[str, str]] = []  # (separator before, sentence)
        self.cum: list[int] = [0]               # cum[i] = tokens in units[:i]

    def _grow_to(self, n_tokens: int) -> None:
        while self.cum[-1] < n_tokens:
            sep, s = next(self._source)
            self.units.append((sep, s))
            # Counted with the separator (a space for the first) as it will sit inside the document.
            self.cum.append(self.cum[-1] + len(self.tokenize((sep or " ") + s)))

    def count_for(self, n_tokens: int) -> int:
        """Number of sentences whose summed token count is nearest to `n_tokens`."""
        if n_tokens <= 0:
            return 0
        self._grow_to(n_tokens)
        return self.boundary_near(n_tokens, len(self.units))

    def boundary_near(self, offset: float, m: int) -> int:
        """The boundary `b <= m` (before `units[b]`) whose token offset `cum[b]` is nearest to `offset`;
        the earlier one on a tie."""
        b = bisect.bisect_left(self.cum, offset, 0, m + 1)
        if b > 0 and (b > m or offset - self.cum[b - 1] <= self.cum[b] - offset):
            b -= 1
        return b
