"""resolve_doc_id: a full id, a unique id prefix (4+ hex characters, any case) or an exact name -> the id."""
from __future__ import annotations

import dataclasses

import pytest

from acre_store import DocumentNotFound, EmbeddedStore, InvalidArgument, StoreError, resolve_doc_id

from .support import TINY, make_doc

# Two documents whose ids share their first 6 characters, and a third named like the first.
IDS = ("abcdef" + "0" * 58, "abcdef" + "1" * 58, "123456" + "2" * 58)
NAMES = ("report.txt", "notes.md", "report.txt")


class CountingStore:
    """The store, counting `list` calls (a full id must not need one)."""

    def __init__(self, store):
        self.store, self.lists = store, 0

    def info(self, doc_id):
        return self.store.info(doc_id)

    def list(self):
        self.lists += 1
        return self.store.list()


@pytest.fixture
def store(tmp_path):
    with EmbeddedStore(str(tmp_path / "s"), ram_bytes=0) as s:
        for seed, (doc_id, name) in enumerate(zip(IDS, NAMES)):
            doc = make_doc(TINY, seed=seed)
            s.put(dataclasses.replace(doc.meta, doc_id=doc_id, name=name), doc.l1, doc.chunks)
        yield CountingStore(s)


def test_full_id_needs_no_listing(store):
    for doc_id in IDS:
        assert resolve_doc_id(store, doc_id) == doc_id
        assert resolve_doc_id(store, doc_id.upper()) == doc_id
    assert store.lists == 0


def test_unique_prefix_any_case(store):
    assert resolve_doc_id(store, "abcdef0") == IDS[0]
    assert resolve_doc_id(store, "ABCDEF1") == IDS[1]
    assert resolve_doc_id(store, "1234") == IDS[2]  # the shortest prefix accepted


def test_exact_name(store):
    assert resolve_doc_id(store, "notes.md") == IDS[1]
    with pytest.raises(DocumentNotFound):
        resolve_doc_id(store, "Notes.md")  # names are matched exactly


def test_unknown(store):
    for ref in ("nothing.txt", "ffff", "f" * 64):
        with pytest.raises(DocumentNotFound, match="unknown document"):
            resolve_doc_id(store, ref)


def test_ambiguous_prefix_or_name(store):
    with pytest.raises(InvalidArgument, match="matches 2 documents") as e:
        resolve_doc_id(store, "abcd")
    assert isinstance(e.value, StoreError)  # reported like every store error (CLI: one line, exit 1)
    with pytest.raises(InvalidArgument, match="matches 2 documents"):
        resolve_doc_id(store, "report.txt")


def test_too_short_prefix(store):
    for ref in ("abc", "A", "12"):
        with pytest.raises(InvalidArgument, match="too short"):
            resolve_doc_id(store, ref)
    with pytest.raises(InvalidArgument):
        resolve_doc_id(store, "  ")


def test_a_short_name_is_still_a_name(tmp_path):
    doc = make_doc(TINY, name="abc")
    with EmbeddedStore(str(tmp_path / "s"), ram_bytes=0) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
        assert resolve_doc_id(s, "abc") == doc.doc_id
        s.delete(resolve_doc_id(s, doc.doc_id[:8]))
        with pytest.raises(DocumentNotFound):
            resolve_doc_id(s, doc.doc_id)
