"""Several facts in one document, each with its own question (the demo): `make_multi_fact_doc`.

Each kind of fact is a `FactTemplate` in `FACT_TEMPLATES`: its phrasing, with `{slots}`, and the
function that draws the slots. Names, towns, colours and passwords are not repeated within a document,
so every question has one answer.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from .needles import EVAL_TEMPLATES
from .planting import plant_sentences
from .tokenizers import Tokenize
from .values import magic_number, random_key, random_person, seeded_rng
from .words import COLOURS, FRUITS, PASSWORD_WORDS, TOWNS

_PLACES = ("north tower", "old mill", "river gate", "east library", "glass house")


@dataclass
class Fact:
    """A planted fact and the question about it."""

    kind: str
    depth: float                       # requested
    sentence: str
    question: str
    answer_prefix: str
    answer: str
    char_span: tuple[int, int] = (0, 0)
    actual_depth: float = 0.0


@dataclass
class MultiFactDoc:
    text: str
    facts: list[Fact]
    n_tokens: int
    haystack: str
    seed: int | str


@dataclass(frozen=True)
class FactTemplate:
    """Phrasing of one kind of fact; formats use the slots that `draw(rng, used)` returns."""

    sentence: str
    question: str
    answer_prefix: str
    answer: str                                                  # the slot that answers the question
    draw: Callable[[random.Random, set[str]], dict[str, str]]    # adds the words it picks to `used`


def _new_person(rng: random.Random, used: set[str]) -> str:
    p = random_person(rng, used)
    used.add(p)
    return p


def _pick_new(rng: random.Random, options: Sequence[str], used: set[str]) -> str:
    x = rng.choice([o for o in options if o not in used])
    used.add(x)
    return x


def _draw_magic(rng: random.Random, used: set[str]) -> dict[str, str]:
    key = random_key(rng, used)
    used.add(key)
    return {"key": key, "value": magic_number(rng)}


def _draw_birthplace(rng: random.Random, used: set[str]) -> dict[str, str]:
    person = _new_person(rng, used)
    return {"person": person, "town": _pick_new(rng, TOWNS, used)}


def _draw_coins(rng: random.Random, used: set[str]) -> dict[str, str]:
    colour = _pick_new(rng, COLOURS, used)
    return {"colour": colour, "n": str(rng.randint(13, 97))}


def _draw_password(rng: random.Random, used: set[str]) -> dict[str, str]:
    word = _pick_new(rng, PASSWORD_WORDS, used)
    return {"word": word, "place": rng.choice(_PLACES)}


def _draw_fruit(rng: random.Random, used: set[str]) -> dict[str, str]:
    person = _new_person(rng, used)
    return {"person": person, "fruit": rng.choice(FRUITS)}


_RULER = EVAL_TEMPLATES["ruler"]

# NOTE: the order of the kinds is part of the output: a bare depth in `make_multi_fact_doc` takes the
# kinds in this order.
FACT_TEMPLATES: dict[str, FactTemplate] = {
    "birthplace": FactTemplate("{person} was born in the harbour town of {town}.",
                               "In which town was {person} born?", "{person} was born in", "town",
                               _draw_birthplace),
    "coins": FactTemplate("The {colour} chest in the lighthouse holds exactly {n} silver coins.",
                          "How many silver coins does the {colour} chest in the lighthouse hold?",
                          "The {colour} chest in the lighthouse holds", "n", _draw_coins),
    "password": FactTemplate("The password for the {place} is {word}.", "What is the password for the {place}?",
                             "The password for the {place} is", "word", _draw_password),
    "magic": FactTemplate(_RULER.needle, _RULER.question, _RULER.answer_prefix, "value", _draw_magic),
    "fruit": FactTemplate("{person}'s favourite fruit is the {fruit}.", "What is {person}'s favourite fruit?",
                          "{person}'s favourite fruit is the", "fruit", _draw_fruit),
}
FACT_KINDS = tuple(FACT_TEMPLATES)


def _fact(kind: str, depth: float, rng: random.Random, used: set[str]) -> Fact:
    if kind not in FACT_TEMPLATES:
        raise ValueError(f"unknown fact kind {kind!r}; expected one of {FACT_KINDS}")
    t = FACT_TEMPLATES[kind]
    slots = t.draw(rng, used)
    return Fact(kind, depth, t.sentence.format(**slots), t.question.format(**slots),
                t.answer_prefix.format(**slots), slots[t.answer])


def make_multi_fact_doc(tokenize: Tokenize, n_tokens: int,
                        facts: Sequence[float | tuple[float, str]] = (0.1, 0.4, 0.65, 0.9),
                        seed: int | str = 0, haystack: str = "prose") -> MultiFactDoc:
    """A document with several facts at several depths, each with its own question (the demo).

    `facts` holds depths, or `(depth, kind)` pairs with kind in `FACT_KINDS`; a bare depth takes the
    next kind in `FACT_KINDS` order. Namespace "demo".
    """
    rng = seeded_rng("demo", seed)
    used: set[str] = set()
    made = []
    for i, f in enumerate(facts):
        depth, kind = (f, FACT_KINDS[i % len(FACT_KINDS)]) if isinstance(f, (int, float)) else f
        made.append(_fact(kind, float(depth), rng, used))
    p = plant_sentences(tokenize, n_tokens, [(f.depth, f.sentence) for f in made], rng, haystack)
    for f, span, d in zip(made, p.spans, p.token_depths):
        f.char_span, f.actual_depth = span, d
    return MultiFactDoc(p.text, made, p.n_tokens, haystack, seed)
