"""Rendezvous (highest-random-weight) hashing of document ids over daemon addresses.

Every address gets a weight per document, sha256(address | doc_id); the document's order is the
addresses by falling weight. The first is the document's home (its RAM copy lives there); when it is
down the next one serves it (reading it from the shared bucket). Removing an address moves only the
documents whose home it was, each to its own next choice; the others keep their home.
"""
from __future__ import annotations

import hashlib
from typing import Sequence


def weight(addr: str, doc_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{addr}|{doc_id}".encode()).digest()[:8], "big")


def rendezvous_order(doc_id: str, addrs: Sequence[str]) -> list[str]:
    """`addrs` by falling weight for this document: its home first."""
    return sorted(addrs, key=lambda a: (-weight(a, doc_id), a))


def split_addrs(addr: str) -> list[str]:
    """'unix:///a.sock, host:5005,...' -> the addresses, in order, without blanks or repeats."""
    out: list[str] = []
    for a in addr.split(","):
        a = a.strip()
        if a and a not in out:
            out.append(a)
    return out
