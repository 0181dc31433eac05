"""Variable tracking (RULER `vt`): follow a chain of assignments `VAR B = VAR A` through the document.

One chain of `N_HOPS` hops (RULER's default: 1 chain, 4 hops, noise haystack): the first statement
binds a 5-digit value, each next one copies the previous variable; the statements keep their order and
are spread over the whole document, so no single place holds the answer (`depth` is None).
"""
from __future__ import annotations

import string

from acre_model.synth import Tokenize, plant_sentences, seeded_rng

from .task import Task

N_HOPS = 4


def _var_name(rng, used: set[str]) -> str:
    while True:
        v = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if v not in used:
            used.add(v)
            return v


def variable_tracking(tokenize: Tokenize, n_tokens: int, depth: float | None, seed: str,
                      task_id: str = "", n_hops: int = N_HOPS, n_chains: int = 1,
                      haystack: str = "noise") -> Task:
    rng = seeded_rng("eval", seed, "vt")
    used: set[str] = set()
    chains, values = [], []
    for _ in range(n_chains):
        while True:
            value = str(rng.randint(10_000, 99_999))
            if value not in values:
                break
        values.append(value)
        names = [_var_name(rng, used) for _ in range(n_hops + 1)]
        statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        chains.append((names, statements))
    plants, owner = [], []
    for c, (_, statements) in enumerate(chains):
        for d, s in zip(sorted(rng.random() for _ in statements), statements):
            plants.append((d, s))
            owner.append(c)
    order = sorted(range(len(plants)), key=lambda i: plants[i][0])  # stable: chain order kept on ties
    plants = [plants[i] for i in order]
    owner = [owner[i] for i in order]
    p = plant_sentences(tokenize, n_tokens, plants, rng, haystack)
    names = chains[0][0]
    spans = [s for s, o in zip(p.spans, owner) if o == 0]
    return Task(task_id, "vt", p.text,
                f"Find all variables that are assigned the value {values[0]} in the text above.",
                f"According to the chain of variable assignments in the text above, {len(names)} variables "
                f"are assigned the value {values[0]}, they are:",
                names, n_tokens, None, "string_match", spans, p.n_tokens,
                {"value": values[0], "n_hops": n_hops, "n_chains": n_chains})
