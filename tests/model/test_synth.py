"""acre_model.synth: deterministic haystacks, lengths on target, needles where asked, probes apart."""
from __future__ import annotations

import hashlib
import re

import pytest

from acre_model import synth
from acre_model.synth import (EVAL_TEMPLATES, PROBE_TEMPLATES, byte_tokenize, fit_length,
                              make_multi_fact_doc, make_needle_doc, make_probe_doc, plant_sentences,
                              seeded_rng, whitespace_tokenize)

TOKENIZERS = {"words": whitespace_tokenize, "bytes": byte_tokenize}


def token_depth(tokenize, text: str, start: int) -> float:
    return len(tokenize(text[:start])) / len(tokenize(text))


def test_same_seed_same_document():
    a = make_needle_doc(whitespace_tokenize, 1500, 0.4, seed=3)
    b = make_needle_doc(whitespace_tokenize, 1500, 0.4, seed=3)
    c = make_needle_doc(whitespace_tokenize, 1500, 0.4, seed=4)
    assert a == b
    assert c.text != a.text and c.key != a.key


def test_same_seed_is_a_controlled_grid():
    """Other depths and lengths of one seed keep key, value and the haystack's opening."""
    a = make_needle_doc(whitespace_tokenize, 1000, 0.9, seed=5)
    b = make_needle_doc(whitespace_tokenize, 3000, 0.2, seed=5)
    assert (a.key, a.value) == (b.key, b.value)
    assert a.text[:300] == b.text.replace(b.needle + " ", "")[:300]


@pytest.mark.parametrize("tok", sorted(TOKENIZERS))
@pytest.mark.parametrize("haystack", synth.HAYSTACKS)
@pytest.mark.parametrize("n_tokens", [600, 2000, 8000])
def test_length_on_target(tok, haystack, n_tokens):
    tokenize = TOKENIZERS[tok]
    if tok == "bytes":
        n_tokens *= 4
    d = make_needle_doc(tokenize, n_tokens, 0.5, seed=1, haystack=haystack)
    assert d.n_tokens == len(tokenize(d.text))
    assert abs(d.n_tokens - n_tokens) <= 0.02 * n_tokens


@pytest.mark.parametrize("haystack", synth.HAYSTACKS)
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0])
def test_needle_once_at_depth(haystack, depth):
    d = make_needle_doc(whitespace_tokenize, 2000, depth, seed=11, haystack=haystack)
    a, b = d.needle_char_span
    assert d.text[a:b] == d.needle
    assert d.text.count(d.needle) == 1
    assert d.text.count(d.value) == 1 and d.text.count(d.key) == 1
    assert d.needle == f"One of the special magic numbers for {d.key} is: {d.value}."
    assert re.fullmatch(r"\d{7}", d.answer) and d.answer == d.value
    assert abs(token_depth(whitespace_tokenize, d.text, a) - depth) <= 0.05
    assert abs(d.actual_depth - depth) <= 0.05
    if depth == 0.0:
        assert d.text.startswith(d.needle)
    if depth == 1.0:
        assert d.text.endswith(d.needle)


def test_ruler_phrasing():
    d = make_needle_doc(whitespace_tokenize, 500, 0.5, seed=0, key="cooperative-elephant", value="1234567")
    assert d.question == "What is the special magic number for cooperative-elephant mentioned in the provided text?"
    assert d.answer_prefix == "The special magic number for cooperative-elephant mentioned in the provided text is"
    assert "One of the special magic numbers for cooperative-elephant is: 1234567." in d.text
    u = make_needle_doc(whitespace_tokenize, 500, 0.5, seed=0, template="ruler_uuid")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", u.answer)


def test_prose_haystack_is_clean_and_varied():
    d = make_needle_doc(whitespace_tokenize, 8000, 0.5, seed=2)
    hay = d.text.replace(d.needle, "")
    assert not re.search(r"\d", hay)
    paragraphs = [p.strip() for p in hay.split("\n\n") if p.strip()]
    assert len(paragraphs) > 30 and len(set(paragraphs)) == len(paragraphs)
    sentences = re.findall(r"[^.?]+[.?]", hay)
    assert len(set(sentences)) == len(sentences)
    # Keys never collide with haystack words, so a key occurs only in its needle.
    key_words = set(synth.KEY_ADJECTIVES) | set(synth.KEY_NOUNS)
    assert not key_words & synth.prose_vocabulary()
    assert not key_words & set(re.findall(r"[a-z]+", hay.lower()))


def test_noise_haystack_is_ruler_noise():
    d = make_needle_doc(whitespace_tokenize, 300, 1.0, seed=0, haystack="noise")
    assert d.text.startswith("The grass is green. The sky is blue. The sun is yellow. Here we go. "
                             "There and back again. The grass is green.")


def test_probes_are_not_evaluation_documents():
    eval_phrases = {p for t in EVAL_TEMPLATES.values() for p in (t.needle, t.question, t.answer_prefix)}
    probe_phrases = {p for t in PROBE_TEMPLATES.values() for p in (t.needle, t.question, t.answer_prefix)}
    assert not eval_phrases & probe_phrases
    for seed in range(6):
        p = make_probe_doc(whitespace_tokenize, 1000, 0.5, seed=seed)
        e = make_needle_doc(whitespace_tokenize, 1000, 0.5, seed=seed)
        assert p.namespace == "probe" and e.namespace == "eval"
        assert p.template in PROBE_TEMPLATES
        assert "magic" not in p.text and "magic" not in p.question
        assert p.text[:200] != e.text[:200]  # different seed space, different haystack
        assert p.text.count(p.needle) == 1 and p.answer in p.needle
        assert p.question.endswith("?") and p.needle.startswith(p.answer_prefix.split(" ")[0])
    # Probes rotate through all their templates.
    assert {make_probe_doc(whitespace_tokenize, 300, 0.5, seed=s).template for s in range(3)} == set(PROBE_TEMPLATES)


def test_seeded_rng_namespaces():
    assert seeded_rng("eval", 1).random() == seeded_rng("eval", 1).random()
    assert seeded_rng("eval", 1).random() != seeded_rng("probe", 1).random()


def test_multi_fact_doc():
    m = make_multi_fact_doc(whitespace_tokenize, 4000, seed=1)
    assert len(m.facts) == 4 and abs(m.n_tokens - 4000) <= 80
    assert len({f.question for f in m.facts}) == 4 and len({f.kind for f in m.facts}) == 4
    for f in m.facts:
        a, b = f.char_span
        assert m.text[a:b] == f.sentence and m.text.count(f.sentence) == 1
        assert f.answer in f.sentence
        assert abs(token_depth(whitespace_tokenize, m.text, a) - f.depth) <= 0.05
    assert make_multi_fact_doc(whitespace_tokenize, 4000, seed=1) == m
    k = make_multi_fact_doc(whitespace_tokenize, 1000, facts=[(0.2, "coins"), (0.8, "coins"), 0.5], seed=2)
    assert [f.kind for f in k.facts] == ["coins", "coins", synth.FACT_KINDS[2]]  # a bare depth takes FACT_KINDS[i]
    assert k.facts[0].question != k.facts[1].question
    with pytest.raises(ValueError):
        make_multi_fact_doc(whitespace_tokenize, 1000, facts=[(0.5, "nope")])


@pytest.mark.parametrize("kind", synth.FACT_KINDS)
def test_every_fact_kind(kind):
    m = make_multi_fact_doc(whitespace_tokenize, 800, facts=[(0.3, kind), (0.7, kind)], seed=0)
    for f in m.facts:
        a, b = f.char_span
        assert f.kind == kind and m.text[a:b] == f.sentence and m.text.count(f.sentence) == 1
        assert f.answer in f.sentence and f.answer not in f.question and f.question.endswith("?")
    assert m.facts[0].sentence != m.facts[1].sentence


def test_needle_template_kinds_are_checked():
    templates = (*EVAL_TEMPLATES.values(), *PROBE_TEMPLATES.values())
    assert set(synth.KEY_KINDS) == {t.key_kind for t in templates}  # every drawer in use
    assert set(synth.VALUE_KINDS) == {t.value_kind for t in templates}
    with pytest.raises(ValueError):
        synth.NeedleTemplate("x", "{key} {value}.", "{key}?", "{key}", "adj-noun", "number8")
    with pytest.raises(ValueError):
        synth.NeedleTemplate("x", "{key} {value}.", "{key}?", "{key}", "colour", "uuid")


def test_plant_keeps_order_and_rejects_bad_depths():
    p = plant_sentences(whitespace_tokenize, 500, [(0.5, "Alpha one."), (0.5, "Beta two.")],
                        seeded_rng("eval", 0), "prose")
    assert p.spans[0][1] < p.spans[1][0]
    with pytest.raises(ValueError):
        plant_sentences(whitespace_tokenize, 500, [(1.5, "x.")], seeded_rng("eval", 0))
    with pytest.raises(ValueError):
        plant_sentences(whitespace_tokenize, 500, [], seeded_rng("eval", 0), "poetry")


def test_fit_length():
    text, units, n = fit_length(lambda k: "ab " * k, whitespace_tokenize, 1000, 10)
    assert n == 1000 and units == 1000 and len(text.split()) == 1000


def test_real_tokenizer():
    from acre_model.paths import DEFAULT_MODEL, models_dir

    folder = models_dir() / DEFAULT_MODEL
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("default model not prepared")
    from acre_model.tokenizer import Tokenizer

    tk = Tokenizer.from_folder(folder)
    for haystack in synth.HAYSTACKS:
        for n in (1024, 4096):
            d = make_needle_doc(tk.encode, n, 0.3, seed=0, haystack=haystack)
            assert abs(d.n_tokens - n) <= 0.02 * n
            assert abs(token_depth(tk.encode, d.text, d.needle_char_span[0]) - 0.3) <= 0.05



# Exact outputs pinned by sha256, computed before acre_model.synth became a package: the evaluation's
# documents (and so its results) depend on every character, so a change that alters any generator's
# text for a given seed must fail here, and then be a deliberate, documented change of the suite.
def _doc_text(d) -> str:
    return "\x00".join((d.text, d.question, d.answer_prefix, d.answer))


def _multi_text(m) -> str:
    return "\x00".join([m.text] + [f"{f.question}\x00{f.answer_prefix}\x00{f.answer}" for f in m.facts])


def _prose_text() -> str:
    g = synth.ProseGenerator(seeded_rng("eval", 4, "pin"))
    return "\n".join(f"{g.sentence()} {g.paragraph_length()}" for _ in range(300))


ALL_FACT_KINDS = [(0.05, "magic"), (0.3, "fruit"), (0.5, "password"), (0.7, "coins"), (0.95, "birthplace")]

PINNED = [
    pytest.param(lambda: _doc_text(make_needle_doc(whitespace_tokenize, 2000, 0.3, seed=7)),
                 "ee68b0b4de20efa9419b35ada3ccd2090c17640f346fa4eadc3128c61e9e92dd", id="needle-ruler-prose"),
    pytest.param(lambda: _doc_text(make_needle_doc(byte_tokenize, 3000, 0.8, seed="s", template="ruler_uuid",
                                                   haystack="noise")),
                 "f213031b5438a58ee3bd515dcbc63796d69190a2d3e41d6d79823bbd7bf6bf5a", id="needle-uuid-noise"),
    pytest.param(lambda: _doc_text(make_probe_doc(whitespace_tokenize, 1000, 0.5, seed=1, template="secret_code")),
                 "7e881ce8b03cf072489596773e96e9bb1ccad8a71fd3c8e960f5936d6182eafe", id="probe-secret-code"),
    pytest.param(lambda: _doc_text(make_probe_doc(byte_tokenize, 4000, 0.1, seed=2)),
                 "ee7263f14a188b435fe7e29428e36ede6a5c19c69d4df91d5efc6edf2cfc6054", id="probe-platform"),
    pytest.param(lambda: _doc_text(make_probe_doc(whitespace_tokenize, 1000, 0.9, seed=3, template="hiding_place")),
                 "455f4fd5bba7cb1d09a87c8ddfdbbd960dab2b6c5e6de6ac5e9f079500de43a8", id="probe-hiding-place"),
    pytest.param(lambda: _multi_text(make_multi_fact_doc(whitespace_tokenize, 3000, seed=5)),
                 "17d248941f0a45e191921a67e463995b19f6b24c328d4791e660a1ccd0ce3eae", id="multi-fact-default"),
    pytest.param(lambda: _multi_text(make_multi_fact_doc(byte_tokenize, 6000, ALL_FACT_KINDS, seed="x",
                                                         haystack="noise")),
                 "045c7f7b0241295eddfabfad0c1707ea8091da90f80fe7076be9c6151f11cf04", id="multi-fact-all-kinds"),
    pytest.param(_prose_text,
                 "0e2f448ffd52d7ffa694c2beef8787e0204cdda2486cbebe57c62dd8cd1a39b4", id="prose-sentences"),
    pytest.param(lambda: plant_sentences(whitespace_tokenize, 700, [(0.0, "First."), (0.5, "Middle."), (1.0, "Last.")],
                                         seeded_rng("eval", 8)).text,
                 "a93dbdda554ecae3be2677ecd61f02cfab200beed81cb7b6256e5c24a69a6236", id="plant-sentences"),
]


@pytest.mark.parametrize("make, sha256", PINNED)
def test_pinned_output(make, sha256):
    assert hashlib.sha256(make().encode()).hexdigest() == sha256
