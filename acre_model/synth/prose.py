"""`ProseGenerator`: the seeded grammar of the prose haystack, essay-like English with no digits.

Every form of a phrase or sentence is a template in a table; each `{slot}` in it is drawn from the
word lists when the template is filled, left to right. A slot is one of `_SLOTS` ("clause", "object",
"nouns" ...), a word fixed by the caller (the head noun of a noun phrase), or "a_" and slots joined by
"_" for one phrase with its article ("a_adj_noun" -> "a quiet garden").

NOTE: the draw order is part of the output. Every template, its position in its table and the order
of its slots fix which document a seed gives; `tests/model/test_synth.py` pins some by sha256.
"""
from __future__ import annotations

import random
import string
from typing import Callable

from .words import (ADJECTIVES, ADVERBIAL_ENDINGS, ADVERBS, CONNECTORS, MASS, NOUNS, VERBS, article, gerund,
                    plural, third_person)

# The forms of a sentence, drawn with equal chance; a plain clause is listed three times (3 in 22).
_SENTENCES = (
    "{clause}.",
    "{clause}.",
    "{clause}.",
    "{connector}, {clause}.",
    "{clause}, but {clause}.",
    "When {clause}, {clause}.",
    "If {clause}, then {clause}.",
    "I used to think that {clause}; now I suspect that {clause}.",
    "It took me a long time to notice that {clause}.",
    "There is {a_adj} difference between {gerund} {object} and {gerund} {object}.",
    "What matters is not {object} but {object}.",
    "This is why {clause}.",
    "{gerund} {object} is {adj} work, and {clause}.",
    "Ask {a_noun} about {object} and you will hear that {clause}.",
    "Nobody {verbs} {object} {ending}.",
    "The question is whether {clause}.",
    "Few {nouns} {verb} {object}, and fewer still {verb} {object}.",
    "Perhaps {clause} because {clause}.",
    "Why do {nouns} {verb} {object}?",
    "It is {adj} to {verb} {object} when {clause}.",
    "That, at least, is what the {nouns} in the {noun} say.",
    "Even {a_adj_noun} can {verb} {object} if {clause}.",
)

# Noun phrases. The head noun `{n}` (`{ns}` in the plural) is drawn before the form is.
_SINGULAR_SUBJECTS = ("the {adj} {n}", "the {n}", "{a_adj_n}", "every {n}", "the {n} of the {noun}",
                      "this {n}")
_PLURAL_SUBJECTS = ("{adj} {ns}", "most {ns}", "many {ns}", "the {ns} of the {noun}", "{ns}",
                    "people who {verb} {object}")
_OBJECTS = ("the {noun}", "{nouns}", "{a_adj_noun}", "{mass}", "our own {nouns}")

# What each slot draws; `g` is the `ProseGenerator`.
_SLOTS: dict[str, Callable[[ProseGenerator], str]] = {
    "adj": lambda g: g.r.choice(ADJECTIVES),
    "noun": lambda g: g.r.choice(NOUNS),
    "nouns": lambda g: plural(g.r.choice(NOUNS)),
    "mass": lambda g: g.r.choice(MASS),
    "verb": lambda g: g.r.choice(VERBS),
    "verbs": lambda g: third_person(g.r.choice(VERBS)),
    "gerund": lambda g: gerund(g.r.choice(VERBS)),
    "connector": lambda g: g.r.choice(CONNECTORS),
    "ending": lambda g: g.r.choice(ADVERBIAL_ENDINGS),
    "object": lambda g: g._fill(g.r.choice(_OBJECTS)),
    "clause": lambda g: g._clause(),
}
_FORMATTER = string.Formatter()


class ProseGenerator:
    """Seeded essay-like sentences and paragraphs; `sentence()` never returns the same string twice."""

    def __init__(self, rng: random.Random):
        self.r = rng
        self._seen: set[str] = set()

    def _word(self, slot: str, fixed: dict[str, str]) -> str:
        if slot in fixed:
            return fixed[slot]
        if slot.startswith("a_"):
            phrase = " ".join(self._word(s, fixed) for s in slot[2:].split("_"))
            return f"{article(phrase)} {phrase}"
        return _SLOTS[slot](self)

    def _fill(self, template: str, **fixed: str) -> str:
        """`template` with its slots drawn in turn, left to right."""
        parts = []
        for literal, slot, _, _ in _FORMATTER.parse(template):
            parts.append(literal)
            if slot is not None:
                parts.append(self._word(slot, fixed))
        return "".join(parts)

    def _subject(self) -> tuple[str, bool]:
        """(text, plural?)"""
        if self.r.random() < 0.5:
            n = self.r.choice(NOUNS)
            return self._fill(self.r.choice(_SINGULAR_SUBJECTS), n=n), False
        ns = plural(self.r.choice(NOUNS))
        return self._fill(self.r.choice(_PLURAL_SUBJECTS), ns=ns), True

    def _clause(self) -> str:
        subj, pl = self._subject()
        adv = f" {self.r.choice(ADVERBS)}" if self.r.random() < 0.3 else ""
        verb = self.r.choice(VERBS)
        return f"{subj}{adv} {verb if pl else third_person(verb)} " + self._fill("{object}")

    def sentence(self) -> str:
        while True:
            s = self._fill(self.r.choice(_SENTENCES))
            s = s[0].upper() + s[1:]
            if s not in self._seen:
                self._seen.add(s)
                return s

    def paragraph_length(self) -> int:
        return self.r.randint(3, 7)
