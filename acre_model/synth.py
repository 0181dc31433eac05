"""Deterministic synthetic documents: haystacks with facts planted at chosen depths.

Used at run time by `acre demo` (a document with several facts), `acre model calibrate` (probes) and,
through `tools/tasks/`, by the tests and the evaluation. Pure Python, no downloads, no global state:
every function takes a seed and draws from its own `random.Random`.

Haystacks (the filler around the facts):
- `"prose"`: essay-like English made up by a small seeded grammar over word lists in this file. No
  digits, no sentence repeated within a document, and none of the words used in keys, so a planted
  value or key occurs in the document exactly where it was planted.
- `"noise"`: RULER's repeated noise, "The grass is green. The sky is blue. ..." over and over.

Lengths: `tokenize` is any callable `str -> list` (token ids; only the length is used). Each haystack
sentence is tokenized once, with its separator; the number of sentences is found by bisection on the
running sums, then the whole document is tokenized once to check, and the sum target is corrected if
the tokenizer does not add up (a BPE merge across a boundary, a BOS added per call). The result is
within `tolerance` (default 1%) of `n_tokens` for any realistic tokenizer.

Depth: a planted sentence goes to the sentence boundary whose haystack-token offset is nearest to
`depth * haystack_tokens`; 0 is the very start of the document, 1 the very end.

Calibration probes and evaluation documents never overlap (issue 4: calibration must not see the
evaluation). They differ in two ways:
- **templates**: evaluation needles use RULER's "special magic number" phrasing with adjective-noun keys
  (`EVAL_TEMPLATES`); probes use other sentences, questions, key vocabularies and value lengths
  (`PROBE_TEMPLATES`: secret codes, platforms, hiding places);
- **seeds**: every generator seeds `random.Random` with a namespaced string (`"acre-eval:..."`,
  `"acre-probe:..."`, `"acre-demo:..."`), so the same integer seed gives unrelated documents in each
  namespace.
"""
from __future__ import annotations

import bisect
import random
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

Tokenize = Callable[[str], Sequence]

HAYSTACKS = ("prose", "noise")

NOISE_SENTENCES = (
    "The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
    "There and back again.",
)

# ----------------------------------------------------------------------------------------------------
# Word lists. Prose words and key words are disjoint (tested), so keys never occur in the haystack.

_NOUNS = """idea problem city river garden machine teacher student builder painter writer engineer
farmer market village library museum bridge road window harbour forest mountain valley island question
answer habit method tool system project company investor customer founder program language theory
experiment pattern story book letter journey season winter summer morning evening kitchen workshop
factory school office neighbour friend stranger traveller musician song melody instrument painting
shadow signal network engine clock lamp map compass boat ship train station street square tower wall
door field orchard meadow seed tree flower leaf root stone rock wave cloud storm argument decision
mistake lesson skill craft design plan draft sketch rule exception detail principle process result
surprise reason purpose mind memory conversation audience reader critic editor gardener carpenter
baker sailor scientist historian architect merchant apprentice student council committee newspaper
essay chapter sentence notebook catalogue archive inventory recipe ritual festival journeyman""".split()
_PLURAL_EXCEPTIONS = {"leaf": "leaves", "journeyman": "journeymen"}

_MASS = """patience time money attention curiosity courage practice taste judgement luck experience
discipline work energy knowledge advice evidence progress history silence weather music freedom
ambition honesty trust routine craftsmanship""".split()

_VERBS = """build improve notice ignore explain study change measure design protect follow question
imagine discover describe choose test solve repair collect share remember forget underestimate
overestimate admire trust doubt value plan organize prefer avoid create finish start visit explore
learn teach watch support reward copy borrow invent simplify rebuild examine praise criticize
misunderstand recognize arrange abandon defend discuss""".split()
_GERUND_EXCEPTIONS = {"forget": "forgetting", "plan": "planning"}

_ADJECTIVES = """careful simple quiet strange useful difficult obvious subtle patient honest curious
ordinary remarkable modest ambitious practical abstract familiar unfamiliar small large old young
early late slow quick bright dark narrow wide gentle rough clever clumsy serious playful reliable
fragile durable expensive cheap rare common hidden visible distant nearby local foreign ancient modern
rigid flexible generous stubborn thoughtful restless peculiar sturdy crowded empty""".split()

_ADVERBS = """usually often rarely sometimes seldom quietly slowly gradually eventually carefully
always never quickly patiently deliberately""".split()

_CONNECTORS = ("However", "Of course", "In practice", "Even so", "For a while", "In the end",
               "As a rule", "At first", "Sooner or later", "On the other hand", "In my experience",
               "Strangely enough", "For most of history", "Nowadays", "Still", "Meanwhile",
               "To be fair", "Looking back")

_ADVERBIAL_ENDINGS = ("on purpose", "for long", "by accident", "without help", "at first",
                      "in a hurry", "for its own sake", "in the same way twice", "all at once")

# Evaluation keys (RULER style, "adjective-noun").
KEY_ADJECTIVES = """cooperative abundant whimsical luminous sluggish jubilant brittle murky zealous
tranquil boisterous meek grumpy lavish nimble opulent placid quirky rustic serene tacky vivid wary
zesty feisty giddy hollow jagged lanky mellow nifty plump ragged shaggy spiky tawny woozy bumpy
chunky dapper fluffy gaudy hefty itchy jolly knotty lumpy mushy""".split()
KEY_NOUNS = """elephant walrus pelican badger otter lobster flamingo porcupine hedgehog armadillo
tortoise gazelle raccoon platypus jackal salamander mongoose ostrich pigeon walnut pumpkin turnip
cabbage saucepan kettle teapot umbrella trombone banjo accordion zeppelin canoe scooter wheelbarrow
bucket ladle spatula thimble doorknob lampshade pancake muffin pretzel noodle""".split()

# Calibration-probe keys: a different vocabulary again.
PROBE_CODE_NAMES = """Juniper Saffron Marigold Hawthorn Cypress Lavender Thistle Magnolia Bramble
Nettle Sorrel Willow Aspen Hazel Rowan Clover Heather Fennel Tansy Yarrow Sequoia Alder Linden
Myrtle""".split()
PROBE_CITIES = """Varnholm Questa Lindqvar Ossory Pellworth Tamsin Brackwater Edelmoor Corvale
Harrowgate Mirefield Dunmarrow Kestrelby Ashcombe Wendmere Stillhaven""".split()
PROBE_CONTAINERS = ("red toolbox", "blue teapot", "green boot", "yellow tin", "old violin case",
                    "brown envelope", "silver jar", "wooden crate")

# Names for facts (demo, QA documents).
FIRST_NAMES = """Marguerite Tobias Ingrid Lorenzo Beatrix Casimir Delphine Emeric Fenella Gideon
Henrietta Ignatius Josephine Leopold Millicent Octavia Percival Rosalind Sebastian Theodora Ulrich
Wilhelmina Ambrose Clementine Desmond Evangeline Florian Griselda Horatio Isadora""".split()
LAST_NAMES = """Olsen Whitcombe Delacroix Ferreira Lindgren Okonkwo Castellano Brannigan Quill
Ashworth Mbeki Halloran Vasquez Thornbury Kowalski Nakamura Pemberton Ravenscroft Sorensen Tremaine
Abernathy Hargreaves Montague Penhaligon""".split()
TOWNS = """Port Elling|Marrowby|Caldmoor|Wexham Cross|Lower Tansley|Brindle Hythe|Orford Keys|
Saltmarsh Green|Greywater|Ambleside Quay|Fallowmere|Kingsferry|Hollin Vale|Redcastle|Northwick|
Eastmere|Silverdale|Thornbridge|Wyndham Reach|Copperfield""".replace("\n", "").split("|")
PASSWORD_WORDS = """lantern quartz meridian harbinger tapestry sapphire driftwood cobalt
mandolin periscope falconry obsidian parsnip velvet windmill gondola""".split()
COLOURS = ("crimson", "azure", "emerald", "amber", "violet", "ivory", "scarlet", "indigo")
FRUITS = ("apricot", "pomegranate", "quince", "mango", "gooseberry", "persimmon", "fig", "kumquat")


def plural(noun: str) -> str:
    if noun in _PLURAL_EXCEPTIONS:
        return _PLURAL_EXCEPTIONS[noun]
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def gerund(verb: str) -> str:
    if verb in _GERUND_EXCEPTIONS:
        return _GERUND_EXCEPTIONS[verb]
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    return verb + "ing"


def article(word: str) -> str:
    if word in ("useful", "unique", "usual"):
        return "a"
    if word in ("honest", "hour"):
        return "an"
    return "an" if word[0] in "aeiou" else "a"


def english_words() -> list[str]:
    """The base English words of this file's lists (nouns, verbs, adjectives, key words), sorted."""
    return sorted(set(_NOUNS) | set(_MASS) | set(_VERBS) | set(_ADJECTIVES) | set(KEY_ADJECTIVES)
                  | set(KEY_NOUNS) | set(PASSWORD_WORDS) | set(FRUITS))


_ONSETS = ("b", "br", "d", "dr", "f", "g", "gl", "k", "l", "m", "n", "p", "pr", "r", "s", "st", "t",
           "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "l", "r", "s", "m", "k")


def pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up word of 2-3 syllables ("bralimor")."""
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(rng.randint(2, 3)))


def prose_vocabulary() -> set[str]:
    """Every word the prose grammar can emit (lower case), for tests of key/haystack disjointness."""
    words: set[str] = set()
    for n in _NOUNS:
        words |= {n, plural(n)}
    for v in _VERBS:
        words |= {v, third_person(v), gerund(v)}
    words |= set(_MASS) | set(_ADJECTIVES) | set(_ADVERBS)
    for phrase in (*_CONNECTORS, *_ADVERBIAL_ENDINGS):
        words |= set(phrase.lower().split())
    return words


# ----------------------------------------------------------------------------------------------------
# The prose grammar.

class ProseGenerator:
    """Seeded essay-like sentences and paragraphs; `sentence()` never returns the same string twice."""

    def __init__(self, rng: random.Random):
        self.r = rng
        self._seen: set[str] = set()

    # --- phrases
    def _adj(self) -> str:
        return self.r.choice(_ADJECTIVES)

    def _noun(self) -> str:
        return self.r.choice(_NOUNS)

    def _a(self, phrase: str) -> str:
        return f"{article(phrase)} {phrase}"

    def _np_singular(self) -> str:
        r, n = self.r, self._noun()
        k = r.randrange(6)
        if k == 0:
            return f"the {self._adj()} {n}"
        if k == 1:
            return f"the {n}"
        if k == 2:
            return self._a(f"{self._adj()} {n}")
        if k == 3:
            return f"every {n}"
        if k == 4:
            return f"the {n} of the {self._noun()}"
        return f"this {n}"

    def _np_plural(self) -> str:
        r, ns = self.r, plural(self._noun())
        k = r.randrange(6)
        if k == 0:
            return f"{self._adj()} {ns}"
        if k == 1:
            return f"most {ns}"
        if k == 2:
            return f"many {ns}"
        if k == 3:
            return f"the {ns} of the {self._noun()}"
        if k == 4:
            return ns
        return f"people who {self.r.choice(_VERBS)} {self._object()}"

    def _subject(self) -> tuple[str, bool]:
        """(text, plural?)"""
        if self.r.random() < 0.5:
            return self._np_singular(), False
        return self._np_plural(), True

    def _object(self) -> str:
        k = self.r.randrange(5)
        if k == 0:
            return f"the {self._noun()}"
        if k == 1:
            return plural(self._noun())
        if k == 2:
            return self._a(f"{self._adj()} {self._noun()}")
        if k == 3:
            return self.r.choice(_MASS)
        return f"our own {plural(self._noun())}"

    def _verb(self, plural_subject: bool) -> str:
        v = self.r.choice(_VERBS)
        return v if plural_subject else third_person(v)

    def _clause(self) -> str:
        subj, pl = self._subject()
        adv = f" {self.r.choice(_ADVERBS)}" if self.r.random() < 0.3 else ""
        return f"{subj}{adv} {self._verb(pl)} {self._object()}"

    # --- sentences
    def _raw_sentence(self) -> str:
        r, c = self.r, self._clause
        k = r.randrange(22)
        if k in (0, 1, 2):
            s = f"{c()}."
        elif k == 3:
            s = f"{r.choice(_CONNECTORS)}, {c()}."
        elif k == 4:
            s = f"{c()}, but {c()}."
        elif k == 5:
            s = f"When {c()}, {c()}."
        elif k == 6:
            s = f"If {c()}, then {c()}."
        elif k == 7:
            s = f"I used to think that {c()}; now I suspect that {c()}."
        elif k == 8:
            s = f"It took me a long time to notice that {c()}."
        elif k == 9:
            s = (f"There is {self._a(self._adj())} difference between {gerund(r.choice(_VERBS))} "
                 f"{self._object()} and {gerund(r.choice(_VERBS))} {self._object()}.")
        elif k == 10:
            s = f"What matters is not {self._object()} but {self._object()}."
        elif k == 11:
            s = f"This is why {c()}."
        elif k == 12:
            s = f"{gerund(r.choice(_VERBS))} {self._object()} is {self._adj()} work, and {c()}."
        elif k == 13:
            s = f"Ask {self._a(self._noun())} about {self._object()} and you will hear that {c()}."
        elif k == 14:
            s = f"Nobody {third_person(r.choice(_VERBS))} {self._object()} {r.choice(_ADVERBIAL_ENDINGS)}."
        elif k == 15:
            s = f"The question is whether {c()}."
        elif k == 16:
            ns = plural(self._noun())
            s = (f"Few {ns} {r.choice(_VERBS)} {self._object()}, and fewer still "
                 f"{r.choice(_VERBS)} {self._object()}.")
        elif k == 17:
            s = f"Perhaps {c()} because {c()}."
        elif k == 18:
            s = f"Why do {plural(self._noun())} {r.choice(_VERBS)} {self._object()}?"
        elif k == 19:
            s = f"It is {self._adj()} to {r.choice(_VERBS)} {self._object()} when {c()}."
        elif k == 20:
            s = f"That, at least, is what the {plural(self._noun())} in the {self._noun()} say."
        else:
            s = f"Even {self._a(self._adj() + ' ' + self._noun())} can {r.choice(_VERBS)} {self._object()} if {c()}."
        return s[0].upper() + s[1:]

    def sentence(self) -> str:
        while True:
            s = self._raw_sentence()
            if s not in self._seen:
                self._seen.add(s)
                return s

    def paragraph_length(self) -> int:
        return self.r.randint(3, 7)


# ----------------------------------------------------------------------------------------------------
# Haystack stream and planting.

class _HaystackStream:
    """Haystack sentences with their separators and token counts, generated lazily, tokenized once."""

    def __init__(self, kind: str, rng: random.Random, tokenize: Tokenize):
        if kind not in HAYSTACKS:
            raise ValueError(f"unknown haystack {kind!r}; expected one of {HAYSTACKS}")
        self.kind, self.tokenize = kind, tokenize
        self.prose = ProseGenerator(rng) if kind == "prose" else None
        self.units: list[tuple[str, str]] = []  # (separator before, sentence)
        self.cum: list[int] = [0]               # cum[i] = tokens in units[:i]
        self._left_in_paragraph = 0

    def _next(self) -> tuple[str, str]:
        if self.prose is None:
            sep = " " if self.units else ""
            return sep, NOISE_SENTENCES[len(self.units) % len(NOISE_SENTENCES)]
        if self._left_in_paragraph == 0:
            self._left_in_paragraph = self.prose.paragraph_length()
            sep = "\n\n" if self.units else ""
        else:
            sep = " "
        self._left_in_paragraph -= 1
        return sep, self.prose.sentence()

    def _grow_to(self, n_tokens: int) -> None:
        while self.cum[-1] < n_tokens:
            sep, s = self._next()
            self.units.append((sep, s))
            self.cum.append(self.cum[-1] + len(self.tokenize((sep or " ") + s)))

    def count_for(self, n_tokens: int) -> int:
        """Number of sentences whose summed token count is nearest to `n_tokens`."""
        if n_tokens <= 0:
            return 0
        self._grow_to(n_tokens)
        i = bisect.bisect_left(self.cum, n_tokens)
        if i > 0 and n_tokens - self.cum[i - 1] <= self.cum[i] - n_tokens:
            i -= 1
        return i


@dataclass
class Planted:
    """A haystack with sentences planted in it."""

    text: str
    spans: list[tuple[int, int]]   # char span of each planted sentence, in the order given
    n_tokens: int                  # len(tokenize(text))
    token_depths: list[float]      # haystack-token offset of each plant / haystack tokens, in [0, 1]


def _join(units: Sequence[tuple[str, str]], plants: dict[int, list[tuple[int, str]]]):
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
    stream = _HaystackStream(haystack, rng, tokenize)
    plant_tokens = sum(len(tokenize(" " + s)) for _, s in plants)
    target = n_tokens - plant_tokens
    best = None
    for _ in range(6):
        m = stream.count_for(target)
        hay = stream.cum[m]
        by_boundary: dict[int, list[tuple[int, str]]] = {}
        depths = []
        for idx, (d, s) in enumerate(plants):
            b = bisect.bisect_left(stream.cum, d * hay, 0, m + 1)
            if b > 0 and (b > m or d * hay - stream.cum[b - 1] <= stream.cum[b] - d * hay):
                b -= 1
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


# ----------------------------------------------------------------------------------------------------
# Seeds and values.

def seeded_rng(namespace: str, seed: int | str, *parts: object) -> random.Random:
    """A `random.Random` private to (namespace, seed, parts). String seeding hashes with SHA-512, so it
    is stable across processes and Python versions (unlike `hash()`)."""
    return random.Random(":".join(map(str, ("acre", namespace, *parts, seed))))


def magic_number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_key(rng: random.Random, exclude: Iterable[str] = ()) -> str:
    """An "adjective-noun" evaluation key not in `exclude`."""
    exclude = set(exclude)
    while True:
        k = f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}"
        if k not in exclude:
            return k


def random_person(rng: random.Random, exclude: Iterable[str] = ()) -> str:
    exclude = set(exclude)
    while True:
        p = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        if p not in exclude:
            return p


# ----------------------------------------------------------------------------------------------------
# Needle templates.

@dataclass(frozen=True)
class NeedleTemplate:
    """Phrasing of one planted fact. Formats use `{key}` and `{value}`."""

    name: str
    needle: str
    question: str
    answer_prefix: str
    key_kind: str     # "adj-noun" | "code-name" | "city" | "person"
    value_kind: str   # "number7" | "uuid" | "number6" | "platform" | "container"


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


def _draw_key(kind: str, rng: random.Random, exclude: Iterable[str] = ()) -> str:
    exclude = set(exclude)
    while True:
        if kind == "adj-noun":
            k = random_key(rng)
        elif kind == "code-name":
            k = rng.choice(PROBE_CODE_NAMES)
        elif kind == "city":
            k = rng.choice(PROBE_CITIES)
        elif kind == "person":
            k = random_person(rng)
        else:
            raise ValueError(f"unknown key kind {kind!r}")
        if k not in exclude:
            return k


def _draw_value(kind: str, rng: random.Random) -> str:
    if kind == "number7":
        return magic_number(rng)
    if kind == "uuid":
        return random_uuid(rng)
    if kind == "number6":
        return str(rng.randint(100_000, 999_999))
    if kind == "platform":
        return str(rng.randint(11, 48))
    if kind == "container":
        return rng.choice(PROBE_CONTAINERS)
    raise ValueError(f"unknown value kind {kind!r}")


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
    k = key if key is not None else _draw_key(t.key_kind, rng)
    v = value if value is not None else _draw_value(t.value_kind, rng)
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


# ----------------------------------------------------------------------------------------------------
# Several facts in one document (the demo).

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


def _fact(kind: str, depth: float, rng: random.Random, used: set[str]) -> Fact:
    if kind == "magic":
        k = random_key(rng, used)
        used.add(k)
        t = EVAL_TEMPLATES["ruler"]
        v = magic_number(rng)
        return Fact(kind, depth, t.needle.format(key=k, value=v), t.question.format(key=k),
                    t.answer_prefix.format(key=k), v)
    if kind == "birthplace":
        p = random_person(rng, used)
        used.add(p)
        town = rng.choice([t for t in TOWNS if t not in used])
        used.add(town)
        return Fact(kind, depth, f"{p} was born in the harbour town of {town}.",
                    f"In which town was {p} born?", f"{p} was born in", town)
    if kind == "coins":
        c = rng.choice([c for c in COLOURS if c not in used])
        used.add(c)
        n = str(rng.randint(13, 97))
        return Fact(kind, depth, f"The {c} chest in the lighthouse holds exactly {n} silver coins.",
                    f"How many silver coins does the {c} chest in the lighthouse hold?",
                    f"The {c} chest in the lighthouse holds", n)
    if kind == "password":
        w = rng.choice([w for w in PASSWORD_WORDS if w not in used])
        used.add(w)
        place = rng.choice(["north tower", "old mill", "river gate", "east library", "glass house"])
        return Fact(kind, depth, f"The password for the {place} is {w}.",
                    f"What is the password for the {place}?", f"The password for the {place} is", w)
    if kind == "fruit":
        p = random_person(rng, used)
        used.add(p)
        f = rng.choice(FRUITS)
        return Fact(kind, depth, f"{p}'s favourite fruit is the {f}.",
                    f"What is {p}'s favourite fruit?", f"{p}'s favourite fruit is the", f)
    raise ValueError(f"unknown fact kind {kind!r}; expected one of {FACT_KINDS}")


FACT_KINDS = ("birthplace", "coins", "password", "magic", "fruit")


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


def whitespace_tokenize(text: str) -> list[str]:
    """A stand-in tokenizer (one token per whitespace-separated word) for tests and dry runs."""
    return text.split()


def byte_tokenize(text: str) -> list[int]:
    """A stand-in tokenizer (one token per UTF-8 byte)."""
    return list(text.encode("utf-8"))
