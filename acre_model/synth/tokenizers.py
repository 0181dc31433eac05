"""The `Tokenize` type the generators take, and two stand-in tokenizers that need no model."""
from __future__ import annotations

from typing import Callable, Sequence

# Any callable text -> token ids; the generators use only the length of what it returns.
Tokenize = Callable[[str], Sequence]


def whitespace_tokenize(text: str) -> list[str]:
    """A stand-in tokenizer (one token per whitespace-separated word) for tests and dry runs."""
    return text.split()


def byte_tokenize(text: str) -> list[int]:
    """A stand-in tokenizer (one token per UTF-8 byte)."""
    return list(text.encode("utf-8"))
