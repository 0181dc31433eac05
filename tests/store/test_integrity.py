"""Integrity: a chunk or L1 part damaged on disk is refused with DATA_LOSS, never returned."""
from __future__ import annotations

import os

import lmdb
import numpy as np
import pytest

from acre_store import DataLoss, EmbeddedStore

from .support import TINY, make_doc


def damage(data_dir: str, backend: str, doc_id: str, part: str, how: str = "flip") -> None:
    """Flip one byte of (or truncate) chunk `part` (an int as str) or L1 part `l/<name>`, store closed."""
    if backend == "zarr":
        base = os.path.join(data_dir, "zarr", "docs", doc_id)
        path = (os.path.join(base, "l1", part[2:], "c") if part.startswith("l/")
                else os.path.join(base, "kv", "c", part, "0", "0", "0", "0", "0"))
        if os.path.isdir(path):  # an L1 array's single chunk file
            while os.path.isdir(path):
                path = os.path.join(path, os.listdir(path)[0])
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            if how == "flip":
                data[len(data) // 2] ^= 0x40
            else:
                data = data[: len(data) // 2]
            f.seek(0)
            f.truncate()
            f.write(data)
        return
    env = lmdb.open(os.path.join(data_dir, "lmdb"), subdir=True, map_size=1 << 30)
    with env.begin(write=True) as txn:
        import json
        token = json.loads(txn.get(b"m/" + doc_id.encode()))["token"]
        key = f"d/{token}/{part}" if part.startswith("l/") else f"d/{token}/c/{int(part):08d}"
        data = bytearray(txn.get(key.encode()))
        if how == "flip":
            data[len(data) // 2] ^= 0x40
        else:
            data = data[: len(data) // 2]
        txn.put(key.encode(), bytes(data))
    env.close()


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_chunk_is_refused_embedded(tmp_path, backend, how):
    doc = make_doc(TINY)
    path = str(tmp_path / "s")
    with EmbeddedStore(path, backend=backend) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
    damage(path, backend, doc.doc_id, "2", how)
    with EmbeddedStore(path) as s:
        with pytest.raises(DataLoss, match="chunk 2"):
            list(s.fetch(doc.doc_id, [2]))
        with pytest.raises(DataLoss):  # a layer range of a damaged chunk is refused too
            list(s.fetch(doc.doc_id, [2], layers=(0, 1)))
        got = list(s.fetch(doc.doc_id, [0, 1, 3]))  # the rest is intact
        assert all(np.array_equal(a, doc.chunks[c]) for c, a in got)
        it = s.fetch(doc.doc_id, [1, 2, 3])
        assert next(it)[0] == 1
        with pytest.raises(DataLoss):
            next(it)
        st = s.stats()
        assert st.disk.checksum_failures == 3 and (doc.doc_id, 2) not in s.store.ram.keys()


def test_damaged_l1_is_refused(tmp_path, backend):
    doc = make_doc(TINY)
    path = str(tmp_path / "s")
    with EmbeddedStore(path, backend=backend) as s:
        s.put(doc.meta, doc.l1, doc.chunks)
    damage(path, backend, doc.doc_id, "l/keys")
    with EmbeddedStore(path) as s:
        with pytest.raises(DataLoss, match="keys"):
            s.get_l1(doc.doc_id)


def daemon_with_damaged_chunk(daemon_factory, backend: str, doc, part: str):
    """A running daemon whose store holds `doc` with chunk `part` damaged on disk (by `damage`)."""
    d = daemon_factory(backend)
    with d.client() as c:
        c.put(doc.meta, doc.l1, doc.chunks)
    d.stop()
    damage(d.data, backend, doc.doc_id, part)
    return d.start()


def test_damaged_chunk_over_the_daemon(daemon_factory, backend):
    doc = make_doc(TINY)
    d = daemon_with_damaged_chunk(daemon_factory, backend, doc, "4")
    with d.client() as c:
        got = []
        with pytest.raises(DataLoss, match="chunk 4"):
            for cid, arr in c.fetch(doc.doc_id, [3, 4, 5]):
                got.append(cid)
        assert got == [3]  # what came before the damaged chunk is fine; nothing after it is sent
        st = c.stats()
        assert st.disk.checksum_failures == 1
        # The damaged read landed in a fresh shared file (cold reads go there directly): it is gone again.
        assert st.shared["files"] == 1 == len(os.listdir(st.shared["dir"]))
        assert np.array_equal(dict(c.fetch(doc.doc_id, [5]))[5], doc.chunks[5])


def test_damaged_large_chunk_over_the_daemon(daemon_factory, backend):
    """A chunk of the real layout (2.9 MiB, one flipped byte in its middle layer) is refused; the good
    chunks around it come back byte-exact, and the damaged one gets no shared file."""
    from .support import REAL

    doc = make_doc(REAL)
    d = daemon_with_damaged_chunk(daemon_factory, backend, doc, "2")
    with d.client() as c:
        with pytest.raises(DataLoss, match="chunk 2"):
            list(c.fetch(doc.doc_id, [2]))
        got = dict(c.fetch(doc.doc_id, [0, 1, 3]))
        assert all(got[i].tobytes() == doc.chunks[i].tobytes() for i in (0, 1, 3))
        st = c.stats()
        assert st.disk.checksum_failures == 1
        assert st.shared["files"] == 3 == len(os.listdir(st.shared["dir"]))  # no file for chunk 2
