"""Deterministic synthetic documents: haystacks with facts planted at chosen depths.

Used at run time by `acre demo` (a document with several facts), `acre model calibrate` (probes) and,
through `tools/tasks/`, by the tests and the evaluation. Pure Python, no downloads, no global state:
every function takes a seed and draws from its own `random.Random`, so the same arguments give the same
text, character for character (`tests/model/test_synth.py` pins some by sha256).

One job per module:
- `words`: the word lists, plural / third person / gerund / article, made-up words;
- `prose`: `ProseGenerator`, the seeded grammar of the prose haystack;
- `haystack`: `HaystackStream`, the filler sentences ("prose" or RULER's "noise") with token counts;
- `planting`: `plant_sentences` (a haystack of n tokens with sentences at given depths), `fit_length`;
- `values`: `seeded_rng` (namespaced seeds) and drawn values: magic numbers, uuids, keys, people;
- `needles`: `make_needle_doc` (evaluation) and `make_probe_doc` (calibration), their templates;
- `facts`: `make_multi_fact_doc`, several kinds of fact in one document (the demo);
- `tokenizers`: the `Tokenize` type and stand-in tokenizers for tests and dry runs.
"""
from .facts import FACT_KINDS, FACT_TEMPLATES, Fact, FactTemplate, MultiFactDoc, make_multi_fact_doc
from .haystack import HAYSTACKS, NOISE_SENTENCES, HaystackStream
from .needles import (EVAL_TEMPLATES, KEY_KINDS, PROBE_TEMPLATES, VALUE_KINDS, NeedleDoc, NeedleTemplate,
                      make_needle_doc, make_probe_doc)
from .planting import Planted, fit_length, plant_sentences
from .prose import ProseGenerator
from .tokenizers import Tokenize, byte_tokenize, whitespace_tokenize
from .values import magic_number, random_key, random_person, random_uuid, seeded_rng
from .words import (COLOURS, FIRST_NAMES, FRUITS, KEY_ADJECTIVES, KEY_NOUNS, LAST_NAMES, PASSWORD_WORDS,
                    PROBE_CITIES, PROBE_CODE_NAMES, PROBE_CONTAINERS, TOWNS, article, english_words, gerund,
                    plural, prose_vocabulary, pseudo_word, third_person)

__all__ = [
    # words
    "COLOURS", "FIRST_NAMES", "FRUITS", "KEY_ADJECTIVES", "KEY_NOUNS", "LAST_NAMES", "PASSWORD_WORDS",
    "PROBE_CITIES", "PROBE_CODE_NAMES", "PROBE_CONTAINERS", "TOWNS", "article", "english_words", "gerund",
    "plural", "prose_vocabulary", "pseudo_word", "third_person",
    # prose, haystack, planting
    "ProseGenerator", "HAYSTACKS", "NOISE_SENTENCES", "HaystackStream", "Planted", "fit_length",
    "plant_sentences",
    # values, needles, facts
    "magic_number", "random_key", "random_person", "random_uuid", "seeded_rng",
    "EVAL_TEMPLATES", "KEY_KINDS", "PROBE_TEMPLATES", "VALUE_KINDS", "NeedleDoc", "NeedleTemplate",
    "make_needle_doc", "make_probe_doc",
    "FACT_KINDS", "FACT_TEMPLATES", "Fact", "FactTemplate", "MultiFactDoc", "make_multi_fact_doc",
    # tokenizers
    "Tokenize", "byte_tokenize", "whitespace_tokenize",
]
