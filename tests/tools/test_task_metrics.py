"""tools.tasks.metrics against hand-computed values."""
from __future__ import annotations

import pytest

from tools.tasks.metrics import METRICS, cut_at_stop, lcs_length, normalize_answer, score


def test_string_match_is_fraction_contained_case_insensitive():
    assert score("string_match", "The number is 1234567.", ["1234567"]) == 1.0
    assert score("string_match", "It is 123456.", ["1234567"]) == 0.0
    assert score("string_match", "abc, DEF and xyz", ["abc", "def", "ghi", "jkl"]) == 0.5
    assert score("string_match", "VRMAE EMUAA", ["vrmae"]) == 1.0


def test_normalize_answer():
    assert normalize_answer("The  Cat, a dog; AN owl!") == "cat dog owl"


def test_token_f1():
    # pred tokens {violin, maker, in, town} vs ref {violin, maker}: P = 2/4, R = 1 -> F1 = 2/3
    assert score("f1", "A violin maker in town.", ["violin maker"]) == pytest.approx(2 / 3)
    assert score("f1", "the violin maker", ["violin maker"]) == 1.0
    assert score("f1", "nothing here", ["violin maker"]) == 0.0
    # best over references
    assert score("f1", "Paris", ["London", "paris"]) == 1.0
    # repeated tokens count once each: pred [a1, a1, b] vs ref [a1, b]: common 2, P 2/3, R 1 -> 0.8
    assert score("f1", "x x y", ["x y"]) == pytest.approx(0.8)


def test_rouge_l():
    assert lcs_length("a b c d e".split(), "a c e f".split()) == 3
    # pred 5 tokens, ref 4 tokens, LCS 3 -> P 3/5, R 3/4, F = 2PR/(P+R) = 2/3
    assert score("rouge_l", "w1 w2 w3 w4 w5", ["w1 w3 w5 w6"]) == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert score("rouge_l", "same words here", ["same words here"]) == 1.0
    assert score("rouge_l", "", ["anything"]) == 0.0


def test_recall_matches_whole_words():
    refs = ["cat", "dog", "blue whale"]
    assert score("recall", "Cat, DOG and the blue whale.", refs) == 1.0
    assert score("recall", "category dogma blue", refs) == 0.0
    assert score("recall", "the dog", refs) == pytest.approx(1 / 3)


def test_score_validates():
    assert set(METRICS) == {"string_match", "f1", "rouge_l", "recall"}
    with pytest.raises(ValueError):
        score("bleu", "x", ["x"])
    with pytest.raises(ValueError):
        score("f1", "x", [])
    assert score("string_match", None, ["x"]) == 0.0
    assert score("f1", "x", "x") == 1.0  # a bare string is one reference


def test_cut_at_stop():
    assert cut_at_stop(" piano tuner. She is kind.", ("\n", ". ")) == " piano tuner"
    assert cut_at_stop("\n\nElverby\nmore", ("\n",)) == "\n\nElverby"  # leading newlines kept
    assert cut_at_stop("no stop here", ("\n",)) == "no stop here"
    assert cut_at_stop("a\nb", ()) == "a\nb"
