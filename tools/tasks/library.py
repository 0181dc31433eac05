"""The `library` family: one question over many documents (issue 14).

A library is `n_docs` prose documents of 1k-3k tokens. Every document holds one fact of the same form
(RULER's "One of the special magic numbers for KEY is: VALUE.") with its own key and value, at a seeded
random depth; a question asks for one document's value, so the facts of all other documents are
distractors of the same form. Keys and values are distinct across the library, so a right answer means
the right document was found.

A spread library (`make_spread_library`, the evaluation's `--spread M`) gives each key to M documents
(values still distinct); a question (`spread_questions`) asks for all the values of one key, so its
answer must be drawn from M documents (RULER's multi-value question, scored by the share of the values
it holds).
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    # a spread question: every document holding one of its values, and the values (else [target], [answer])
    targets: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = self.targets or [self.target]
        self.answers = self.answers or [self.answer]

    def score(self, prediction: str) -> float:
        """The share of the values asked for that the prediction holds (one value: 0 or 1)."""
        return score("string_match", prediction or "", self.answers)


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
        docs.append(_document(tokenize, rng, i, keys[i], values, min_tokens, max_tokens))
    return docs


def _document(tokenize: Tokenize, rng, i: int, key: str, values: list[str], min_tokens: int,
              max_tokens: int) -> LibraryDoc:
    """The i-th document: a value not in `values` (appended to it), a length, the fact planted."""
    v = magic_number(rng)
    while v in values:
        v = magic_number(rng)
    values.append(v)
    n = rng.randint(min_tokens, max_tokens)
    p = plant_sentences(tokenize, n, [(rng.uniform(0.05, 0.95), _RULER.needle.format(key=key, value=v))],
                        rng, "prose")
    return LibraryDoc(f"doc-{i:03d}", p.text, key, v, p.spans[0], p.n_tokens)


def make_spread_library(tokenize: Tokenize, n_docs: int, spread: int, seed: int | str = 0, min_tokens: int = 1000,
                        max_tokens: int = 3000) -> list[LibraryDoc]:
    """`make_library` where each key is given to `spread` documents (the last key to what is left), in
    seeded random order; values distinct. Depends on (n_docs, spread, seed) only."""
    if n_docs < 1 or spread < 1 or not 0 < min_tokens <= max_tokens:
        raise ValueError("need n_docs >= 1, spread >= 1 and 0 < min_tokens <= max_tokens")
    rng = seeded_rng("eval", seed, "library-spread", n_docs, spread)
    keys: list[str] = []
    for _ in range(-(-n_docs // spread)):
        keys.append(random_key(rng, keys))
    owner = [keys[i // spread] for i in range(n_docs)]
    rng.shuffle(owner)
    values: list[str] = []
    return [_document(tokenize, rng, i, owner[i], values, min_tokens, max_tokens) for i in range(n_docs)]


def spread_questions(docs: list[LibraryDoc], n_questions: int, seed: int | str = 0) -> list[LibraryQuestion]:
    """Questions for all the values of `n_questions` keys held by more than one document (drawn without
    replacement, seeded); `target` is the first document holding the key, `targets` all of them."""
    holders: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        holders.setdefault(d.key, []).append(i)
    shared = [k for k, h in holders.items() if len(h) > 1]
    rng = seeded_rng("eval", seed, "library-spread-questions", len(docs))
    out = []
    for key in rng.sample(shared, min(n_questions, len(shared))):
        h = holders[key]
        out.append(LibraryQuestion(
            h[0], f"What are all the special magic numbers for {key} mentioned in the provided text?",
            f"The special magic numbers for {key} mentioned in the provided text are", docs[h[0]].value,
            16 * len(h), h, [docs[i].value for i in h]))
    return out


def library_questions(docs: list[LibraryDoc], n_questions: int, seed: int | str = 0) -> list[LibraryQuestion]:
    """Questions about the facts of `n_questions` documents drawn without replacement (seeded)."""
    rng = seeded_rng("eval", seed, "library-questions", len(docs))
    targets = rng.sample(range(len(docs)), min(n_questions, len(docs)))
    return [LibraryQuestion(t, _RULER.question.format(key=docs[t].key),
                            _RULER.answer_prefix.format(key=docs[t].key), docs[t].value) for t in targets]
