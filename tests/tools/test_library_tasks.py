"""The library family (tools/tasks/library.py): one fact of the same form per document, distinct keys
and values, lengths in range, questions about one document's fact."""
from __future__ import annotations

from acre_model.synth import whitespace_tokenize
from tools.tasks.library import library_questions, make_library


def test_library_documents_hold_one_fact_each_with_distinct_keys_and_values():
    docs = make_library(whitespace_tokenize, 12, seed=3, min_tokens=300, max_tokens=600)
    assert len(docs) == 12 and len({d.name for d in docs}) == 12
    assert len({d.key for d in docs}) == 12 and len({d.value for d in docs}) == 12
    for d in docs:
        a, b = d.needle_span
        assert d.text[a:b] == f"One of the special magic numbers for {d.key} is: {d.value}."
        assert d.text.count("special magic number") == 1  # its own fact only
        assert 0.9 * 300 <= len(whitespace_tokenize(d.text)) <= 1.1 * 600
    again = make_library(whitespace_tokenize, 12, seed=3, min_tokens=300, max_tokens=600)
    assert [d.text for d in again] == [d.text for d in docs]


def test_library_questions_ask_for_one_documents_value():
    docs = make_library(whitespace_tokenize, 8, seed=1, min_tokens=200, max_tokens=300)
    qs = library_questions(docs, 5, seed=1)
    assert len({q.target for q in qs}) == 5
    for q in qs:
        assert docs[q.target].key in q.question and q.answer == docs[q.target].value
        assert q.score(f" {q.answer}.") == 1.0
        other = next(d for i, d in enumerate(docs) if i != q.target)
        assert q.score(f" {other.value}.") == 0.0


def test_a_spread_library_gives_each_key_to_several_documents_and_asks_for_all_values():
    from tools.tasks.library import make_spread_library, spread_questions

    docs = make_spread_library(whitespace_tokenize, 10, 3, seed=2, min_tokens=200, max_tokens=300)
    by_key: dict = {}
    for i, d in enumerate(docs):
        a, b = d.needle_span
        assert d.text[a:b] == f"One of the special magic numbers for {d.key} is: {d.value}."
        by_key.setdefault(d.key, []).append(i)
    assert sorted(map(len, by_key.values())) == [1, 3, 3, 3] and len({d.value for d in docs}) == 10
    assert [d.text for d in make_spread_library(whitespace_tokenize, 10, 3, seed=2, min_tokens=200,
                                                max_tokens=300)] == [d.text for d in docs]
    qs = spread_questions(docs, 5, seed=2)
    assert len(qs) == 3  # the keys held by more than one document
    for q in qs:
        assert q.targets == by_key[docs[q.target].key] and len(q.answers) == 3
        assert q.answers == [docs[i].value for i in q.targets] and q.max_new_tokens == 48
        assert q.score(" and ".join(q.answers)) == 1.0
        assert abs(q.score(q.answers[0]) - 1 / 3) < 1e-9
    # make_library is unchanged by spreading: one value per question
    one = library_questions(make_library(whitespace_tokenize, 6, seed=2, min_tokens=200, max_tokens=300), 2, seed=2)
    assert all(q.targets == [q.target] and q.answers == [q.answer] for q in one)
