"""Zarr v3 disk tier: one directory-store group per document.

    <root>/docs/<doc_id>/zarr.json            Zarr group
                        acre.json            the DocRecord (meta, L1 specs, CRC32C per chunk layer)
                        kv/                  [n_chunks, n_layers, 2, n_kv_heads, chunk_size, head_dim],
                                             one Zarr chunk per L2 chunk, raw little-endian bytes (no
                                             compression); the last chunk is zero-padded to chunk_size
                        l1/<name>/           one array per L1 part, one Zarr chunk
    <root>/staging/<doc_id>.<token>/         a put in progress (deleted on start-up)
    <root>/trash/                            documents being deleted (deleted on start-up)

Publishing is `rename(staging/<doc_id>.<token>, docs/<doc_id>)` after every file is fsynced: atomic
on POSIX, so a crash leaves the document absent or complete.

NOTE: writes go through the zarr library (so the folder is a plain Zarr v3 group any zarr reader can
open), but `read_into` reads the chunk file directly: with the fixed `bytes` codec and `/` chunk key
encoding its path and content are known, and skipping zarr's per-call machinery makes a cold read
about 2x faster (1.5 ms -> 0.6 ms for a 2.8 MiB chunk on the dev machine).
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from typing import Callable

import numpy as np
import zarr

from ..record import DocRecord, TensorSpec
from ..types import DocLayout
from .base import DiskTier, Staging

log = logging.getLogger(__name__)

RECORD = "acre.json"
_ZCONFIG = {"write_empty_chunks": True}  # an all-zero chunk must still exist as a file


def _fsync_tree(path: str) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


class ZarrStaging(Staging):
    def __init__(self, tier: "ZarrTier", doc_id: str, layout: DocLayout, l1: list[TensorSpec]):
        self.tier, self.doc_id, self.layout = tier, doc_id, layout
        self.path = os.path.join(tier.staging_dir, f"{doc_id}.{uuid.uuid4().hex}")
        self.group = zarr.open_group(self.path, mode="w-")
        L = layout
        full = (L.n_layers, 2, L.n_kv_heads, L.chunk_size, L.head_dim)
        self.kv = self.group.create_array(
            "kv", shape=(L.n_chunks, *full), chunks=(1, *full), dtype=L.np_dtype,
            compressors=None, fill_value=0, config=_ZCONFIG)

    def write_l1(self, spec: TensorSpec, arr: np.ndarray) -> None:
        a = self.group.create_array(
            f"l1/{spec.name}", shape=spec.shape, chunks=tuple(max(1, s) for s in spec.shape),
            dtype=spec.np_dtype, compressors=None, fill_value=0, config=_ZCONFIG)
        if arr.ndim == 0:  # zarr merges a 0-d array value as a sequence
            a[()] = arr.item()
        elif arr.size:
            a[...] = arr

    def write_chunk(self, c: int, chunk: np.ndarray) -> None:
        self.kv[c, :, :, :, : chunk.shape[3], :] = chunk

    def commit(self, record: DocRecord) -> None:
        with open(os.path.join(self.path, RECORD), "wb") as f:
            f.write(record.to_json())
        _fsync_tree(self.path)
        os.rename(self.path, self.tier.doc_dir(self.doc_id))
        _fsync_dir(self.tier.docs_dir)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ZarrTier(DiskTier):
    name = "zarr"

    def __init__(self, root: str):
        self.root = root
        self.docs_dir = os.path.join(root, "docs")
        self.staging_dir = os.path.join(root, "staging")
        self.trash_dir = os.path.join(root, "trash")
        self.quarantine_dir = os.path.join(root, "quarantine")  # damaged documents, set aside
        for d in (self.docs_dir, self.staging_dir, self.trash_dir, self.quarantine_dir):
            os.makedirs(d, exist_ok=True)
        self.quarantined = {name: "damaged record (found by an earlier start)"
                            for name in os.listdir(self.quarantine_dir)}

    def doc_dir(self, doc_id: str) -> str:
        return os.path.join(self.docs_dir, doc_id)

    def chunk_path(self, doc_id: str, c: int) -> str:
        """The file holding chunk c (Zarr v3 default chunk key encoding, '/' separator)."""
        return os.path.join(self.docs_dir, doc_id, "kv", "c", str(c), "0", "0", "0", "0", "0")

    def recover(self) -> int:
        n = 0
        for d in (self.staging_dir, self.trash_dir):
            for name in os.listdir(d):
                shutil.rmtree(os.path.join(d, name), ignore_errors=True)
                n += d == self.staging_dir
        for name in os.listdir(self.docs_dir):  # leftovers of an interrupted record update
            for f in os.listdir(self.doc_dir(name)):
                if f.endswith(".tmp"):
                    os.unlink(os.path.join(self.doc_dir(name), f))
        return n

    def records(self) -> list[DocRecord]:
        out = []
        for name in sorted(os.listdir(self.docs_dir)):
            try:
                with open(os.path.join(self.doc_dir(name), RECORD), "rb") as f:
                    out.append(DocRecord.from_json(f.read()))
            except Exception as e:  # noqa: BLE001 - any damage sets this one document aside
                self._quarantine(name, f"{type(e).__name__}: {e}")
        return out

    def _quarantine(self, name: str, why: str) -> None:
        dest = os.path.join(self.quarantine_dir, name)
        shutil.rmtree(dest, ignore_errors=True)  # an older damaged copy of the same id
        os.rename(self.doc_dir(name), dest)
        _fsync_dir(self.docs_dir)
        self.quarantined[name] = why
        log.error("document %s set aside as damaged (%s); delete it or put it again", name, why)

    def drop_quarantined(self, doc_id: str) -> bool:
        if self.quarantined.pop(doc_id, None) is None:
            return False
        shutil.rmtree(os.path.join(self.quarantine_dir, doc_id), ignore_errors=True)
        return True

    def stage(self, doc_id: str, layout: DocLayout, l1: list[TensorSpec]) -> Staging:
        return ZarrStaging(self, doc_id, layout, l1)

    def read_into(self, record: DocRecord, c: int, out: memoryview, on_layer: Callable[[int], None]) -> None:
        L = record.meta.layout
        if L.chunk_len(c) != L.chunk_size:
            return self._read_short_into(record, c, out, on_layer)
        step = len(out) // L.n_layers
        with open(self.chunk_path(record.doc_id, c), "rb", buffering=0) as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            if size != len(out):
                raise ValueError(f"chunk file holds {size} bytes, expected {len(out)}")
            # one read per layer: the kernel's readahead keeps the disk busy while a layer is verified
            for i in range(L.n_layers):
                done = 0
                while done < step:
                    n = os.preadv(fd, [out[i * step + done:(i + 1) * step]], i * step + done)
                    if n <= 0:
                        raise ValueError(f"chunk file ended at {i * step + done} bytes, expected {len(out)}")
                    done += n
                on_layer(i)

    def _read_short_into(self, record: DocRecord, c: int, out: memoryview, on_layer: Callable[[int], None]) -> None:
        """The short last chunk is stored padded to chunk_size: read the file whole, then gather each layer's
        tokens into `out`."""
        L = record.meta.layout
        padded = np.empty((L.n_layers, 2, L.n_kv_heads, L.chunk_size, L.head_dim), L.np_dtype)
        with open(self.chunk_path(record.doc_id, c), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            n = f.readinto(memoryview(padded).cast("B")) if size == padded.nbytes else -1
        if n != padded.nbytes:
            raise ValueError(f"chunk file holds {size} bytes, expected {padded.nbytes}")
        if len(out) != L.chunk_nbytes(c):
            raise ValueError(f"chunk holds {L.chunk_nbytes(c)} bytes, expected {len(out)}")
        dst = np.frombuffer(out, L.np_dtype).reshape(L.chunk_shape(c))
        for i in range(L.n_layers):
            dst[i] = padded[i, :, :, :L.chunk_len(c)]
            on_layer(i)

    def will_need(self, record: DocRecord, chunk_ids: list[int]) -> None:
        for c in chunk_ids:
            try:
                fd = os.open(self.chunk_path(record.doc_id, c), os.O_RDONLY)
            except OSError:
                continue  # the read itself reports it
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def read_l1(self, record: DocRecord, spec: TensorSpec) -> np.ndarray:
        a = zarr.open_array(os.path.join(self.doc_dir(record.doc_id), "l1", spec.name), mode="r")
        return np.require(a[...], dtype=spec.np_dtype, requirements="C")

    def update_record(self, record: DocRecord) -> None:
        _write_file_atomic(os.path.join(self.doc_dir(record.doc_id), RECORD), record.to_json())

    def delete(self, record: DocRecord) -> None:
        trash = os.path.join(self.trash_dir, f"{record.doc_id}.{uuid.uuid4().hex}")
        os.rename(self.doc_dir(record.doc_id), trash)
        _fsync_dir(self.docs_dir)
        shutil.rmtree(trash, ignore_errors=True)
