"""Needle documents: one planted fact ("needle") in a haystack, and the question about it.

A `NeedleTemplate` phrases the fact and names the kind of its key and of its value; `KEY_KINDS` and
`VALUE_KINDS` map each kind to the function that draws one.

Calibration probes and evaluation documents never overlap (issue 4: calibration must not see the
evaluation). They differ in two ways:
- **templates**: evaluation needles use RULER's "special magic number" phrasing with adjective-noun keys
  (`EVAL_TEMPLATES`); probes use other sentences, questions, key vocabularies and value lengths
  (`PROBE_TEMPLATES`: secret codes, platforms, hiding places);
- **seeds**: `make_needle_doc` draws in namespace "eval", `make_probe_doc` in "probe" (`seeded_rng`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .planting import plant_sentences
from .tokenizers import Tokenize
from .values import magic_number, random_key, random_person, random_uuid, seeded_rng
from .words import PROBE_CITIES, PROBE_CODE_NAMES, PROBE_CONTAINERS

KEY_KINDS: dict[str, Callable[[random.Random], str]] = {
    "adj-noun": random_key,                                  # "jolly-walrus"
    "code-name": lambda rng: rng.choice(PROBE_CODE_NAMES),   # "Juniper"
    "city": lambda rng: rng.choice(PROBE_CITIES),            # "Varnholm"
    "person": random_person,                                 # "Ingrid Olsen"
}

VALUE_KINDS: dict[str, Callable[[random.Random], str]] = {
    "number7": magic_number,                                 # "4820173"
    "uuid": random_uuid,
    "number6": lambda rng: str(rng.randint(100_000, 999_999)),
    "platform": lambda rng: str(rng.randint(11, 48)),
    "container": lambda rng: rng.choice(PROBE_CONTAINERS),   # "blue teapot"
}


@dataclass(frozen=True)
class NeedleTemplate:
    """Phrasing of one planted fact. Formats use `{key}` and `{value}`."""

    name: str
    needle: str
    question: str
    answer_prefix: str
    key_kind: str     # a key of KEY_KINDS
    value_kind: str   # a key of VALUE_KINDS

    def __post_init__(self):
        if self.key_kind not in KEY_KINDS:
            raise ValueError(f"unknown key kind {self.key_kind!r}; expected one of {list(KEY_KINDS)}")
        if self.value_kind not in VALUE_KINDS:
            raise ValueError(f"unknown value kind {self.value_kind!r}; expected one of {list(VALUE_KINDS)}")


EVAL_TEMPLATES: dict[str, NeedleTemplate] = {t.name: t for t in (
    NeedleTemplate(
        "ruler",
        "One of the special magic numbers for {key} is: {value}.",
        "What is the special magic number for {key} mentioned in the provided text?",
        "The special magic number for {key} mentioned in the provided text is",
        "adj-noun", "number7"),
    NeedleTemplate(
        "ruler_uuid",
        "One of the special magic uuids for {key} is: {value}.",
        "What is the special magic uuid for {key} mentioned in the provided text?",
        "The special magic uuid for {key} mentioned in the provided text is",
        "adj-noun", "uuid"),
)}

PROBE_TEMPLATES: dict[str, NeedleTemplate] = {t.name: t for t in (
    NeedleTemplate(
        "secret_code",
        "The secret code for Project {key} is {value}.",
        "What is the secret code for Project {key}?",
        "The secret code for Project {key} is",
        "code-name", "number6"),
    NeedleTemplate(
        "platform",
        "Trains to {key} always depart from platform {value}.",
        "From which platform do trains to {key} depart?",
        "Trains to {key} depart from platform",
        "city", "platform"),
    NeedleTemplate(
        "hiding_place",
        "{key} hides the spare key inside the {value}.",
        "Where does {key} hide the spare key?",
        "{key} hides the spare key inside the",
        "person", "container"),
)}


@dataclass
class NeedleDoc:
    """One document with one planted needle, and the question about it."""

    text: str
    question: str
    answer_prefix: str
    answer: str                        # the expected answer string (the value)
    needle: str                        # the planted sentence
    needle_char_span: tuple[int, int]  # text[start:end] == needle
    key: str
    value: str
    depth: float                       # requested depth in [0, 1]
    actual_depth: float                # haystack-token depth where the needle went
    template: str
    haystack: str
    n_tokens: int                      # len(tokenize(text))
    seed: int | str
    namespace: str                     # "eval" or "probe"


def _needle_doc(namespace: str, templates: dict[str, NeedleTemplate], tokenize: Tokenize,
                n_tokens: int, depth: float, seed: int | str, key: str | None, value: str | None,
                template: str, haystack: str) -> NeedleDoc:
    if template not in templates:
        raise ValueError(f"unknown {namespace} template {template!r}; expected one of {sorted(templates)}")
    t = templates[template]
    rng = seeded_rng(namespace, seed, template)
    # Key and value are drawn before the haystack: the same seed at other depths and lengths gives
    # the same key, value and haystack (a controlled depth x length grid, as in Kamradt's NIAH).
    k = key if key is not None else KEY_KINDS[t.key_kind](rng)
    v = value if value is not None else VALUE_KINDS[t.value_kind](rng)
    needle = t.needle.format(key=k, value=v)
    p = plant_sentences(tokenize, n_tokens, [(depth, needle)], rng, haystack)
    return NeedleDoc(p.text, t.question.format(key=k), t.answer_prefix.format(key=k), v, needle,
                     p.spans[0], k, v, depth, p.token_depths[0], template, haystack, p.n_tokens,
                     seed, namespace)


def make_needle_doc(tokenize: Tokenize, n_tokens: int, depth: float, seed: int | str,
                    key: str | None = None, template: str = "ruler", haystack: str = "prose",
                    value: str | None = None) -> NeedleDoc:
    """An evaluation needle document (RULER phrasing, `EVAL_TEMPLATES`, namespace "eval")."""
    return _needle_doc("eval", EVAL_TEMPLATES, tokenize, n_tokens, depth, seed, key, value,
                       template, haystack)


def make_probe_doc(tokenize: Tokenize, n_tokens: int, depth: float, seed: int | str,
                   template: str | None = None, haystack: str = "prose") -> NeedleDoc:
    """A calibration probe (`PROBE_TEMPLATES`, namespace "probe"): never an evaluation document.

    Without `template`, probes rotate through the probe templates by seed (an int seed picks
    `sorted(PROBE_TEMPLATES)[seed % 3]`).
    """
    if template is None:
        names = sorted(PROBE_TEMPLATES)
        idx = seed if isinstance(seed, int) else seeded_rng("probe", seed, "template").randrange(len(names))
        template = names[idx % len(names)]
    return _needle_doc("probe", PROBE_TEMPLATES, tokenize, n_tokens, depth, seed, None, None,
                       template, haystack)

