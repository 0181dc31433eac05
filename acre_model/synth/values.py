"""Seeds and drawn values: the namespaced `random.Random`, magic numbers, uuids, keys, people.

Every generator seeds its own `random.Random` with a namespaced string (`"acre:eval:..."`,
`"acre:probe:..."`, `"acre:demo:..."`), so the same integer seed gives unrelated documents in each
namespace and there is no global random state.
"""
from __future__ import annotations

import random
import uuid
from typing import Callable, Iterable

from .words import FIRST_NAMES, KEY_ADJECTIVES, KEY_NOUNS, LAST_NAMES


def seeded_rng(namespace: str, seed: int | str, *parts: object) -> random.Random:
    """A `random.Random` private to (namespace, seed, parts). String seeding hashes with SHA-512, so it
    is stable across processes and Python versions (unlike `hash()`)."""
    return random.Random(":".join(map(str, ("acre", namespace, *parts, seed))))


def magic_number(rng: random.Random) -> str:
    """Seven digits, RULER's "special magic number"."""
    return str(rng.randint(1_000_000, 9_999_999))


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _draw_new(draw: Callable[[], str], exclude: Iterable[str]) -> str:
    """`draw()` until it gives something not in `exclude`."""
    exclude = set(exclude)
    while True:
        x = draw()
        if x not in exclude:
            return x


def random_key(rng: random.Random, exclude: Iterable[str] = ()) -> str:
    """An "adjective-noun" evaluation key not in `exclude`."""
    return _draw_new(lambda: f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}", exclude)


def random_person(rng: random.Random, exclude: Iterable[str] = ()) -> str:
    """A "First Last" name not in `exclude`."""
    return _draw_new(lambda: f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}", exclude)
