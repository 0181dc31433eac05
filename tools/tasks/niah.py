"""Needle-in-a-haystack families, RULER style (Hsieh et al. 2024, https://arxiv.org/abs/2404.06654).

- `niah_single_noise`: one needle in the repeated-noise haystack (RULER niah_single_1);
- `niah_single_prose`: one needle in generated prose (niah_single_2);
- `niah_multikey`: the needle plus 3 distractor needles with other keys (niah_multikey_1);
- `niah_multivalue`: 4 values for one key, all asked for (niah_multivalue);
- `niah_multiquery`: 4 keys asked for in one question (niah_multiquery).

The needle the question is about goes to `depth`; the others go to seeded random depths. Keys, values
and the haystack depend on the seed only, so one seed across depths and lengths is a controlled grid.
"""
from __future__ import annotations

from acre_model.synth import (EVAL_TEMPLATES, Tokenize, magic_number, make_needle_doc,
                              plant_sentences, random_key, seeded_rng)

from .task import Task

_RULER = EVAL_TEMPLATES["ruler"]
N_DISTRACTORS = 3
N_VALUES = 4
N_QUERIES = 4


def _single(haystack: str, family: str):
    def build(tokenize: Tokenize, n_tokens: int, depth: float, seed: str, task_id: str = "") -> Task:
        d = make_needle_doc(tokenize, n_tokens, depth, seed=f"{family}:{seed}", haystack=haystack)
        return Task(task_id, family, d.text, d.question, d.answer_prefix, [d.answer], n_tokens, depth,
                    "string_match", [d.needle_char_span], d.n_tokens,
                    {"key": d.key, "haystack": haystack, "actual_depth": d.actual_depth})
    return build


niah_single_noise = _single("noise", "niah_single_noise")
niah_single_prose = _single("prose", "niah_single_prose")


def niah_multikey(tokenize: Tokenize, n_tokens: int, depth: float, seed: str, task_id: str = "") -> Task:
    rng = seeded_rng("eval", seed, "niah_multikey")
    keys: list[str] = []
    for _ in range(1 + N_DISTRACTORS):
        keys.append(random_key(rng, keys))
    values = [magic_number(rng) for _ in keys]
    depths = [depth] + [rng.random() for _ in range(N_DISTRACTORS)]
    plants = [(d, _RULER.needle.format(key=k, value=v)) for d, k, v in zip(depths, keys, values)]
    p = plant_sentences(tokenize, n_tokens, plants, rng, "prose")
    return Task(task_id, "niah_multikey", p.text, _RULER.question.format(key=keys[0]),
                _RULER.answer_prefix.format(key=keys[0]), [values[0]], n_tokens, depth,
                "string_match", [p.spans[0]], p.n_tokens,
                {"key": keys[0], "distractor_keys": keys[1:], "distractor_values": values[1:],
                 "actual_depth": p.token_depths[0]})


def niah_multivalue(tokenize: Tokenize, n_tokens: int, depth: float, seed: str, task_id: str = "") -> Task:
    rng = seeded_rng("eval", seed, "niah_multivalue")
    key = random_key(rng)
    values: list[str] = []
    while len(values) < N_VALUES:
        v = magic_number(rng)
        if v not in values:
            values.append(v)
    depths = [depth] + [rng.random() for _ in range(N_VALUES - 1)]
    p = plant_sentences(tokenize, n_tokens,
                        [(d, _RULER.needle.format(key=key, value=v)) for d, v in zip(depths, values)],
                        rng, "prose")
    return Task(task_id, "niah_multivalue", p.text,
                f"What are all the special magic numbers for {key} mentioned in the provided text?",
                f"The special magic numbers for {key} mentioned in the provided text are", values,
                n_tokens, depth, "string_match", p.spans, p.n_tokens,
                {"key": key, "actual_depth": p.token_depths[0]})


def _enumerate(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f", and {items[-1]}" if len(items) > 2 else " and ".join(items)


def niah_multiquery(tokenize: Tokenize, n_tokens: int, depth: float, seed: str, task_id: str = "") -> Task:
    rng = seeded_rng("eval", seed, "niah_multiquery")
    keys: list[str] = []
    for _ in range(N_QUERIES):
        keys.append(random_key(rng, keys))
    values = [magic_number(rng) for _ in keys]
    depths = [depth] + [rng.random() for _ in range(N_QUERIES - 1)]
    p = plant_sentences(tokenize, n_tokens,
                        [(d, _RULER.needle.format(key=k, value=v)) for d, k, v in zip(depths, keys, values)],
                        rng, "prose")
    q = _enumerate(keys)
    return Task(task_id, "niah_multiquery", p.text,
                f"What are all the special magic numbers for {q} mentioned in the provided text?",
                f"The special magic numbers for {q} mentioned in the provided text are", values,
                n_tokens, depth, "string_match", p.spans, p.n_tokens,
                {"keys": keys, "actual_depth": p.token_depths[0]})
