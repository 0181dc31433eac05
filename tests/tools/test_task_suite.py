"""tools.tasks: every family, the registry and the grid, with stand-in tokenizers."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from acre_model.synth import byte_tokenize, whitespace_tokenize
from tools.tasks import FAMILIES, QUICK, SuiteSize, Task, build_suite, suite_size

LENGTHS, DEPTHS = (800, 2500), (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def suite() -> list[Task]:
    return build_suite(whitespace_tokenize, LENGTHS, DEPTHS, n_per_cell=1, seed=0)


def by_family(tasks, family):
    return [t for t in tasks if t.family == family]


def test_grid_shape_and_ids(suite):
    n_depth = sum(f.uses_depth for f in FAMILIES.values())
    n_free = len(FAMILIES) - n_depth
    assert len(suite) == len(LENGTHS) * (n_depth * len(DEPTHS) + n_free)
    assert len({t.task_id for t in suite}) == len(suite)
    assert "niah_single_prose/2500/d0.50/0" in {t.task_id for t in suite}
    assert "vt/800/-/0" in {t.task_id for t in suite}
    for t in suite:
        assert t.metric == FAMILIES[t.family].metric
        assert (t.depth is None) != FAMILIES[t.family].uses_depth
        assert t.n_tokens_target in LENGTHS


def test_deterministic(suite):
    again = build_suite(whitespace_tokenize, LENGTHS, DEPTHS, n_per_cell=1, seed=0)
    assert [t.to_dict() for t in again] == [t.to_dict() for t in suite]
    other = build_suite(whitespace_tokenize, LENGTHS[:1], DEPTHS[:1], n_per_cell=1, seed=1)
    assert all(o.doc_text != s.doc_text for o, s in zip(other, suite))


def test_lengths_within_tolerance(suite):
    for t in suite:
        assert t.n_tokens == len(t.doc_text.split())
        assert abs(t.n_tokens - t.n_tokens_target) <= 0.02 * t.n_tokens_target, t.task_id


def test_byte_tokenizer_lengths():
    for t in build_suite(byte_tokenize, (6000,), (0.3,), 1, seed=2):
        assert abs(t.n_tokens - 6000) <= 0.02 * 6000, t.task_id


def test_answers_are_in_the_document_and_in_the_spans(suite):
    for t in suite:
        span_text = " ".join(t.doc_text[a:b] for a, b in t.needle_spans)
        for ans in t.answers:
            assert ans in t.doc_text, t.task_id
            if t.needle_spans:
                assert ans in span_text, t.task_id
        if t.depth is not None:  # the asked-about fact is the first span, at the requested depth
            a = t.needle_spans[0][0]
            assert abs(len(t.doc_text[:a].split()) / t.n_tokens - t.depth) <= 0.05, t.task_id


def test_perfect_answers_score_one_and_wrong_ones_do_not(suite):
    for t in suite:
        perfect = " " + ", ".join(t.answers) + "."  # the generated text after the answer prefix
        assert t.score(perfect) == 1.0, t.task_id
        assert t.score("I do not know.") == 0.0, t.task_id


def test_single_needle_families(suite):
    for t in by_family(suite, "niah_single_noise"):
        assert t.doc_text.startswith("The grass is green.") or t.depth == 0.0
        assert t.doc_text.count(t.answers[0]) == 1
    for t in by_family(suite, "niah_single_prose"):
        assert "The grass is green." not in t.doc_text


def test_multikey_has_distractors(suite):
    for t in by_family(suite, "niah_multikey"):
        key = t.meta["key"]
        assert len(t.meta["distractor_keys"]) == 3 and key not in t.meta["distractor_keys"]
        assert t.doc_text.count(key) == 1 and key in t.question
        for k, v in zip(t.meta["distractor_keys"], t.meta["distractor_values"]):
            assert f"One of the special magic numbers for {k} is: {v}." in t.doc_text
        assert len(re.findall(r"special magic numbers for", t.doc_text)) == 4


def test_multivalue_and_multiquery(suite):
    for t in by_family(suite, "niah_multivalue"):
        assert len(set(t.answers)) == 4 and len(t.needle_spans) == 4
        assert t.doc_text.count(t.meta["key"]) == 4
    for t in by_family(suite, "niah_multiquery"):
        assert len(t.meta["keys"]) == 4 and all(k in t.question for k in t.meta["keys"])


def test_variable_tracking_chain_in_order(suite):
    for t in by_family(suite, "vt"):
        names, value = t.answers, t.meta["value"]
        assert len(names) == 5
        statements = [t.doc_text[a:b] for a, b in t.needle_spans]
        assert statements[0] == f"VAR {names[0]} = {value}."
        assert statements[1:] == [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        assert [a for a, _ in t.needle_spans] == sorted(a for a, _ in t.needle_spans)


def test_common_words(suite):
    for t in by_family(suite, "cwe"):
        words = re.findall(r"\d+\. (\S+)", t.doc_text)
        counts = Counter(words)
        assert all(counts[w] == t.meta["f_common"] for w in t.answers)
        others = [c for w, c in counts.items() if w not in t.answers]
        assert max(others) == t.meta["f_uncommon"] < t.meta["f_common"]
        assert [int(n) for n in re.findall(r"(\d+)\. ", t.doc_text)] == list(range(1, len(words) + 1))


def test_frequent_words(suite):
    for t in by_family(suite, "fwe"):
        counts = Counter(t.doc_text.split("\n", 1)[1].split())
        top = counts.most_common(4)
        assert {w for w, _ in top[:3]} == set(t.answers) and top[2][1] > top[3][1]


def test_fact_qa(suite):
    for t in by_family(suite, "qa_local"):
        assert t.meta["person"] in t.question and len(t.needle_spans) == 1
        record = t.doc_text[slice(*t.needle_spans[0])]
        assert record.startswith(t.meta["person"] + " is ") and t.answers[0] in record
        assert t.stop and t.score(" " + t.answers[0] + ". She is also a baker.\nMore.") == 1.0
    for t in by_family(suite, "qa_global"):
        town = t.meta["town"]
        records = re.findall(rf"([A-Z]\w+ [A-Z]\w+) lives in {town}\.", t.doc_text)
        assert sorted(records) == sorted(t.answers) and 2 <= len(records) <= 5
        assert len(t.needle_spans) == len(records)


def test_answer_budgets(suite):
    for t in suite:
        assert t.max_new_tokens == FAMILIES[t.family].max_new_tokens >= 16


def test_registry_and_sizes():
    assert suite_size(True) is QUICK and suite_size(False).lengths[-1] >= 8192
    with pytest.raises(ValueError, match="unknown task families"):
        build_suite(whitespace_tokenize, families=["niah_single_prose", "nope"])
    with pytest.raises(ValueError):
        SuiteSize((1024,), (1.5,), 1)
    few = build_suite(whitespace_tokenize, (500,), (0.5,), 2, families=["vt", "qa_local"], n_per_length=3)
    assert [t.task_id for t in few] == ["vt/500/-/0", "vt/500/-/1", "vt/500/-/2",
                                        "qa_local/500/d0.50/0", "qa_local/500/d0.50/1"]


def test_task_validation_and_round_trip(suite):
    t = suite[0]
    assert Task.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError):
        Task("x", "f", "doc", "q", "", ["a"], 10, None, "bleu")
    with pytest.raises(ValueError):
        Task("x", "f", "doc", "q", "", ["a"], 10, None, "f1", [(0, 99)])
    with pytest.raises(ValueError):
        Task("x", "f", "doc", "q", "", [], 10, None, "f1")
