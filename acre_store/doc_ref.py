"""resolve_doc_id: what a user may type to name a stored document, turned into its id.

Accepted, as every command takes them: a full document id; a unique prefix of one, at least
`MIN_PREFIX` hex characters (case-insensitive, as git takes commit ids); or a document's exact name.
"""
from __future__ import annotations

import re

from .api import StoreAPI
from .errors import DocumentNotFound, InvalidArgument
from .types import check_doc_id

MIN_PREFIX = 4
_HEX = re.compile(r"[0-9a-f]+")


def resolve_doc_id(store: StoreAPI, ref: str) -> str:
    """The id of the one stored document `ref` names (a full id, a unique id prefix, or an exact name).

    A full id costs one `info` call, no listing. DocumentNotFound if nothing matches; InvalidArgument if
    several documents match (the message says how many) or a hex prefix is shorter than MIN_PREFIX."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidArgument(f"empty document reference {ref!r}: give an id, an id prefix or a name")
    key = ref.strip().lower()
    if _is_doc_id(key):
        try:
            return store.info(key).doc_id
        except DocumentNotFound:
            pass  # it may still be the prefix of a longer id, or a name
    is_prefix = len(key) >= MIN_PREFIX and _HEX.fullmatch(key) is not None
    matches = {m.doc_id for m in store.list() if m.name == ref or (is_prefix and m.doc_id.startswith(key))}
    if len(matches) == 1:
        return matches.pop()
    if matches:
        raise InvalidArgument(f"{ref!r} matches {len(matches)} documents; give more of the id")
    if _HEX.fullmatch(key) and len(key) < MIN_PREFIX:
        raise InvalidArgument(f"document id prefix {ref!r} is too short: give at least {MIN_PREFIX} characters")
    raise DocumentNotFound(f"unknown document {ref!r}: no document has this id, id prefix or name")


def _is_doc_id(text: str) -> bool:
    try:
        check_doc_id(text)
    except InvalidArgument:
        return False
    return True
