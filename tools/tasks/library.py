"""The `library` family: one question over many documents (issue 14).

A library is `n_docs` prose documents of 1k-3k tokens. Every document holds one fact of the same form
(RULER's "One of the special magic numbers for KEY is: VALUE.") with its own key and value, at a seeded
random depth; a question asks for one document's value, so the facts of all other documents are
distractors of the same form. Keys and values are distinct across the library, so a right answer means
the right document was found.
"""
from __future__ import annotations

from dataclasses import dataclass

from acre_model.synth import EVAL_TEMPLATES, Tokenize, magic_number, plant_sentences, random_key, seeded_rng

from .metrics import score

_RULER = EVAL_TEMPLATES["ruler"]


@dataclass
class LibraryDoc:
    name: str
    text: str
    key: str
    value: str
    needle_span: tuple[int, int]  # characters of the fact in `text`
    n_tokens: int


@dataclass
class LibraryQuestion:
    target: int  # index of the document that holds the fact
    question: str
    answer_prefix: str
    answer: str
    max_new_tokens: int = 16

    def score(self, prediction: str) -> float:
        return score("string_match", prediction or "", [self.answer])


def make_library(tokenize: Tokenize, n_docs: int, seed: int | str = 0, min_tokens: int = 1000,
                 max_tokens: int = 3000) -> list[LibraryDoc]:
    """`n_docs` documents of `min_tokens`..`max_tokens` tokens, one fact each (same form, distinct keys
    and values). Depends on (n_docs, seed) only."""
    if n_docs < 1 or not 0 < min_tokens <= max_tokens:
        raise ValueError("need n_docs >= 1 and 0 < min_tokens <= max_tokens")
    rng = seeded_rng("eval", seed, "library", n_docs)
    keys: list[str] = []
    values: list[str] = []
    docs = []
    for i in range(n_docs):
        keys.append(random_key(rng, keys))
        v = magic_number(rng)
        while v in values:
            v = magic_number(rng)
        values.append(v)
        n = rng.randint(min_tokens, max_tokens)
        p = plant_sentences(tokenize, n, [(rng.uniform(0.05, 0.95), _RULER.needle.format(key=keys[i], value=v))],
                            rng, "prose")
        docs.append(LibraryDoc(f"doc-{i:03d}", p.text, keys[i], v, p.spans[0], p.n_tokens))
    return docs


def library_questions(docs: list[LibraryDoc], n_questions: int, seed: int | str = 0) -> list[LibraryQuestion]:
    """Questions about the facts of `n_questions` documents drawn without replacement (seeded)."""
    rng = seeded_rng("eval", seed, "library-questions", len(docs))
    targets = rng.sample(range(len(docs)), min(n_questions, len(docs)))
    return [LibraryQuestion(t, _RULER.question.format(key=docs[t].key),
                            _RULER.answer_prefix.format(key=docs[t].key), docs[t].value) for t in targets]
