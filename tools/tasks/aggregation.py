"""Aggregation families: the answer needs the whole document, not one place in it (`depth` is None).

- `cwe` (RULER common words extraction): a numbered list of words in which 10 words appear
  `f_common` times and every other word `f_uncommon` times; name the 10 most common. The frequencies
  scale with length as RULER's do (few repeats at 1k, 30 vs 3 from 8k on) so the list stays hard.
- `fwe` (RULER frequent words extraction): coded words drawn from a Zipf(2) distribution; name the
  three most frequent.
Both are scored with `recall` of the expected words.
"""
from __future__ import annotations

import string
from collections import Counter

from acre_model.synth import Tokenize, english_words, fit_length, pseudo_word, seeded_rng

from .task import Task

N_COMMON = 10
FWE_TOP = 3
FWE_ALPHA = 2.0
FWE_VOCAB = 400

_CWE_HEADER = ("Below is a numbered list of words. In these words, some appear more often than "
               "others. Memorize the ones that appear most often.\n")
_FWE_HEADER = ("Read the following coded text and track the frequency of each coded word. "
               "Find the three most frequently appeared coded words.\n")


def _cwe_vocab(n: int) -> list[str]:
    """At least `n` distinct words: the English word lists, then made-up words (fixed order)."""
    words = english_words()
    seen = set(words)
    rng = seeded_rng("eval", 0, "cwe-vocab")
    while len(words) < n:
        w = pseudo_word(rng)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def cwe_frequencies(n_entries: int) -> tuple[int, int]:
    """(f_common, f_uncommon) for a list of `n_entries` entries: common words fill about a quarter."""
    f_common = min(30, max(4, n_entries // (4 * N_COMMON)))
    return f_common, max(1, f_common // 10)


def common_words(tokenize: Tokenize, n_tokens: int, depth: float | None, seed: str,
                 task_id: str = "") -> Task:
    picked = {}

    def build(n_entries: int) -> str:
        rng = seeded_rng("eval", seed, "cwe", n_entries)
        f_c, f_u = cwe_frequencies(n_entries)
        n_uncommon = max(0, (n_entries - N_COMMON * f_c) // f_u)
        words = rng.sample(_cwe_vocab(N_COMMON + n_uncommon), N_COMMON + n_uncommon)
        entries = words[:N_COMMON] * f_c + words[N_COMMON:] * f_u
        rng.shuffle(entries)
        picked[n_entries] = (words[:N_COMMON], f_c, f_u)
        return _CWE_HEADER + " ".join(f"{i + 1}. {w}" for i, w in enumerate(entries))

    per_entry = max(1.0, len(tokenize(build(200))) / 200)
    text, n_entries, n = fit_length(build, tokenize, n_tokens, round(n_tokens / per_entry))
    common, f_c, f_u = picked[n_entries]
    return Task(task_id, "cwe", text, f"What are the {N_COMMON} most common words in the above list?",
                f"The top {N_COMMON} words that appear most often in the list are:", list(common),
                n_tokens, None, "recall", [], n,
                {"f_common": f_c, "f_uncommon": f_u, "n_entries": n_entries})


def _coded_vocab(rng) -> list[str]:
    words: list[str] = []
    seen = {"the", "and", "are"}
    while len(words) < FWE_VOCAB:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def frequent_words(tokenize: Tokenize, n_tokens: int, depth: float | None, seed: str,
                   task_id: str = "") -> Task:
    picked = {}
    weights = [1.0 / (k + 1) ** FWE_ALPHA for k in range(FWE_VOCAB)]

    vocab = _coded_vocab(seeded_rng("eval", seed, "fwe-vocab"))

    def build(n_words: int) -> str:
        # One stream of draws for every length (choices() draws one by one), so the text of n words is
        # a prefix of the text of n + 1 words and the length search is monotone.
        rng = seeded_rng("eval", seed, "fwe")
        while True:  # redraw until the top three are unambiguous (a tie with the 4th is rare)
            sample = rng.choices(range(FWE_VOCAB), weights, k=n_words)
            counts = sorted(((c, i) for i, c in Counter(sample).items()), reverse=True)
            if len(counts) > FWE_TOP and counts[FWE_TOP - 1][0] > counts[FWE_TOP][0]:
                break
        picked[n_words] = [vocab[i] for _, i in counts[:FWE_TOP]]
        lines = [" ".join(vocab[i] for i in sample[j:j + 20]) for j in range(0, n_words, 20)]
        return _FWE_HEADER + "\n".join(lines)

    per_word = max(1.0, len(tokenize(build(200))) / 200)
    text, n_words, n = fit_length(build, tokenize, n_tokens, round(n_tokens / per_word))
    return Task(task_id, "fwe", text,
                "What are the three most frequently appeared coded words in the above coded text?",
                "According to the coded text above, the three most frequently appeared words are:",
                picked[n_words], n_tokens, None, "recall", [], n,
                {"n_words": n_words, "alpha": FWE_ALPHA})
