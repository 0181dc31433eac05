"""Scores of a prediction against reference answers, all in [0, 1], pure Python.

- `string_match`: RULER's string_match_all: the fraction of references contained in the prediction,
  case-insensitive (https://github.com/NVIDIA/RULER, scripts/eval/synthetic/constants.py).
- `f1`: SQuAD token F1 (lower case, punctuation and articles removed), best over references
  (LongBench's qa_f1_score for English).
- `rouge_l`: ROUGE-L F1 (longest common subsequence of normalised tokens), best over references.
- `recall`: the fraction of references found in the prediction as whole normalised words
  ("cat" does not match "category"); for aggregation answers that are lists of items.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

METRICS = ("string_match", "f1", "rouge_l", "recall")

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch if ch not in _PUNCT else " " for ch in s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def string_match(prediction: str, references: Sequence[str]) -> float:
    p = prediction.lower()
    return sum(r.lower() in p for r in references) / len(references)


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(ref_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    p = normalize_answer(prediction).split()
    return max(_f1(p, normalize_answer(r).split()) for r in references)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    p = normalize_answer(prediction).split()
    best = 0.0
    for r in references:
        t = normalize_answer(r).split()
        lcs = lcs_length(p, t) if p and t else 0
        if lcs:
            precision, recall = lcs / len(p), lcs / len(t)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def recall(prediction: str, references: Sequence[str]) -> float:
    p = f" {normalize_answer(prediction)} "
    found = 0
    for r in references:
        t = normalize_answer(r)
        found += bool(t) and f" {t} " in p
    return found / len(references)


def cut_at_stop(prediction: str, stop: Sequence[str]) -> str:
    """`prediction` up to the earliest stop string that comes after its first non-space character."""
    start = len(prediction) - len(prediction.lstrip())
    cut = len(prediction)
    for s in stop:
        i = prediction.find(s, start + 1)
        if i != -1:
            cut = min(cut, i)
    return prediction[:cut]


_FUNCS = {"string_match": string_match, "f1": token_f1, "rouge_l": rouge_l, "recall": recall}


def score(metric: str, prediction: str, references: Sequence[str]) -> float:
    """`metric` (one of `METRICS`) of `prediction` against `references`."""
    if metric not in _FUNCS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if isinstance(references, str):
        references = [references]
    if not references:
        raise ValueError("no references")
    return float(_FUNCS[metric](prediction or "", references))
