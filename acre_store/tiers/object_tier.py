"""ObjectTier: the S3-compatible bucket shared by every daemon, under each daemon's RAM and disk tiers.

The client is obstore (the Rust `object_store` crate behind a Python API): it reads credentials, region
and endpoint from the standard AWS environment variables, retries with backoff, and releases the GIL
while a request is in flight, so a thread pool runs ranged GETs in parallel.

Layout under `s3://BUCKET/PREFIX/`:

    docs/<doc_id>/shard-00000.bin   chunks [first, first + n) back to back, each chunk's raw little-endian
                                    bytes [n_layers, 2, n_kv_heads, len_c, head_dim] (the disk tier's form)
    docs/<doc_id>/shard-00001.bin   ... one shard per `shard_bytes` of chunks (64 MiB by default)
    docs/<doc_id>/l1.bin            every L1 part back to back, in the record's order
    docs/<doc_id>/manifest.json     the document's record (meta, L1 specs with CRC32C, CRC32C per
                                    (chunk, layer): the same checksums as on local disk) and the shard table

Publishing (`PublishingStaging`, used by a put): each shard is uploaded as soon as its chunks arrived
(while the put goes on), then `l1.bin`, and the manifest only once every other object is in the bucket.
A document without a manifest does not exist for any daemon, so a reader never sees a half-written one;
shards a killed put left behind are invisible and the next put of that id overwrites them.

Reading (`download`): a whole document is fetched with ranged GETs of about `range_bytes` (whole chunks),
`parallel` at a time, consumed in chunk order; each chunk is checked against its per-layer CRC32C as it
lands. Byte offsets come from the layout (every chunk but the last has the same size). `read_chunks` reads
just some chunks (ranged GETs inside their shards, on threads of their own): what a request asks for while
the document is still coming down (read_through.py).
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Callable, Iterator
from urllib.parse import urlparse

import numpy as np

from ..checksum import crc32c, layer_crcs
from ..errors import DataLoss, InvalidArgument, StoreUnavailable
from ..record import DocRecord, TensorSpec
from ..types import DocLayout, DocMeta
from .base import Staging

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
L1_OBJECT = "l1.bin"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ObjectStoreConfig:
    """Where the shared bucket is and how it is read. `url`: s3://BUCKET[/PREFIX]."""

    url: str
    endpoint: str | None = None  # None: $AWS_ENDPOINT_URL, else AWS S3
    shard_bytes: int = 64 << 20  # chunks per shard object: as many as fit (at least one)
    range_bytes: int = 8 << 20  # one ranged GET reads about this much (whole chunks)
    parallel: int = 16  # ranged GETs in flight per document read
    recheck_s: float = 30.0  # a local copy served after this long without a look at its manifest: HEAD it
    land_quiet_s: float = 3.0  # a read-through's background download waits until the document was not read for this long

    def __post_init__(self) -> None:
        u = urlparse(self.url)
        if u.scheme != "s3" or not u.netloc:
            raise InvalidArgument(f"object store must be s3://BUCKET[/PREFIX], got {self.url!r}")
        if self.shard_bytes <= 0 or self.range_bytes <= 0 or self.parallel <= 0:
            raise InvalidArgument("shard_bytes, range_bytes and parallel must be > 0")
        if not self.recheck_s >= 0:
            raise InvalidArgument(f"recheck_s must be >= 0 seconds, got {self.recheck_s!r}")
        if not self.land_quiet_s >= 0:
            raise InvalidArgument(f"land_quiet_s must be >= 0 seconds, got {self.land_quiet_s!r}")

    @property
    def bucket(self) -> str:
        return urlparse(self.url).netloc

    @property
    def prefix(self) -> str:
        return urlparse(self.url).path.strip("/")


@dataclass(frozen=True)
class Manifest:
    """A published document: its record and the first chunk of each shard (plus the end, n_chunks)."""

    record: DocRecord
    shard_starts: list[int]  # shard i holds chunks [shard_starts[i], shard_starts[i+1] or n_chunks)

    def to_json(self) -> bytes:
        d = json.loads(self.record.to_json())
        d.pop("token", None)
        d["manifest_version"] = MANIFEST_VERSION
        d["shard_starts"] = self.shard_starts
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        d = json.loads(data)
        if d.get("manifest_version") != MANIFEST_VERSION:
            raise DataLoss(f"manifest version {d.get('manifest_version')!r}, this code reads {MANIFEST_VERSION}")
        return cls(DocRecord.from_json(data), [int(s) for s in d["shard_starts"]])


def chunk_offsets(layout: DocLayout, first: int, stop: int) -> list[int]:
    """Byte offsets of chunks [first, stop) inside a shard that starts at chunk `first`, plus the end."""
    out, pos = [0], 0
    for c in range(first, stop):
        pos += layout.chunk_nbytes(c)
        out.append(pos)
    return out


class ObjectTier:
    """The bucket: publish (through `PublishingStaging`), read a manifest, download, list, delete."""

    def __init__(self, config: ObjectStoreConfig):
        try:
            from obstore.store import S3Store
        except ImportError:
            raise InvalidArgument("the object-store tier needs obstore: pip install 'acre[s3]'") from None

        self.config = config
        endpoint = config.endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        kw = {}
        if endpoint:
            kw["endpoint"] = endpoint
            if endpoint.startswith("http://"):  # a local S3-compatible server (MinIO, moto) without TLS
                kw["client_options"] = {"allow_http": True}
        # NOTE: bounded retries (obstore's default waits up to 3 minutes): a bucket that cannot be reached
        # fails the call in seconds, with a clear StoreUnavailable, instead of holding a handler thread.
        kw["retry_config"] = {"max_retries": 3, "retry_timeout": timedelta(seconds=15),
                              "backoff": {"init_backoff": timedelta(milliseconds=100),
                                          "max_backoff": timedelta(seconds=2), "base": 2}}
        try:
            self.store = S3Store(config.bucket, prefix=config.prefix or None, **kw)
        except Exception as e:  # noqa: BLE001 - obstore's configuration errors carry the reason
            raise InvalidArgument(f"object store {config.url}: {e}") from None
        self._pool = ThreadPoolExecutor(config.parallel, thread_name_prefix="acre-s3")
        self._urgent = ThreadPoolExecutor(config.parallel, thread_name_prefix="acre-s3-ask")  # read_chunks
        self._manifests: dict[str, tuple[str, DocMeta]] = {}  # path -> (e_tag, meta): list() reads each once
        self.counters = {"gets": 0, "get_bytes": 0, "puts": 0, "put_bytes": 0, "deletes": 0, "errors": 0,
                         "read_throughs": 0, "ahead_gets": 0, "heads": 0, "dropped_deleted": 0}
        self._lock = threading.Lock()
        self._doc_locks: dict[str, threading.Lock] = {}

    def doc_lock(self, doc_id: str) -> threading.Lock:
        """The lock that makes concurrent read-throughs of one document download it once."""
        with self._lock:
            return self._doc_locks.setdefault(doc_id, threading.Lock())

    def stats(self) -> dict:
        """The bucket's URL and the request counters (the `object_store` section of `StoreStats`)."""
        with self._lock:
            return {"url": self.url, **self.counters}

    @property
    def url(self) -> str:
        return self.config.url

    # -- requests -------------------------------------------------------------------------------

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self.counters[k] += v

    def _call(self, what: str, fn: Callable, *args, **kw):
        """One request; a missing object raises FileNotFoundError, any other failure StoreUnavailable."""
        try:
            return fn(self.store, *args, **kw)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - obstore raises its own classes for network/auth errors
            self._count(errors=1)
            raise StoreUnavailable(f"object store {self.url}: {what} failed: {e}") from None

    def put_object(self, path: str, data) -> None:
        import obstore

        self._call(f"PUT {path}", obstore.put, path, data)
        self._count(puts=1, put_bytes=memoryview(data).nbytes)

    def get_range(self, path: str, start: int, end: int) -> memoryview:
        import obstore

        buf = memoryview(self._call(f"GET {path} [{start}, {end})", obstore.get_range, path, start=start, end=end))
        self._count(gets=1, get_bytes=buf.nbytes)
        if buf.nbytes != end - start:
            raise DataLoss(f"object {path} is shorter than its manifest says ({buf.nbytes} of {end - start} bytes)")
        return buf

    def get_object(self, path: str) -> bytes:
        import obstore

        data = self._call(f"GET {path}", lambda st, p: obstore.get(st, p).bytes(), path)
        self._count(gets=1, get_bytes=len(data))
        return bytes(data)

    # -- documents ------------------------------------------------------------------------------

    @staticmethod
    def doc_dir(doc_id: str) -> str:
        return f"docs/{doc_id}"

    def manifest(self, doc_id: str) -> Manifest | None:
        """The published document's manifest, or None if it is not in the bucket."""
        try:
            data = self.get_object(f"{self.doc_dir(doc_id)}/{MANIFEST}")
        except FileNotFoundError:
            return None
        try:
            man = Manifest.from_json(data)
        except (ValueError, KeyError, TypeError) as e:
            raise DataLoss(f"manifest of document {doc_id} in {self.url} is damaged: {e}") from None
        if man.record.doc_id != doc_id:
            raise DataLoss(f"manifest of document {doc_id} in {self.url} names {man.record.doc_id}")
        return man

    def published(self, doc_id: str) -> bool:
        """Whether the document's manifest is in the bucket (one HEAD)."""
        import obstore

        path = f"{self.doc_dir(doc_id)}/{MANIFEST}"
        try:
            self._call(f"HEAD {path}", obstore.head, path)
        except FileNotFoundError:
            return False
        finally:
            self._count(heads=1)
        return True

    def publishing(self, staging: Staging, meta: DocMeta, l1: list[TensorSpec]) -> "PublishingStaging":
        return PublishingStaging(self, staging, meta, l1)

    def download(self, man: Manifest, on_l1: Callable[[TensorSpec, np.ndarray], None],
                 on_chunk: Callable[[int, np.ndarray], None]) -> None:
        """Read the whole document: L1 parts, then chunks in order, each verified before it is handed on.
        Ranged GETs run `parallel` at a time; at most 2x that many ranges are held in memory."""
        for spec, arr in self.read_l1(man):
            on_l1(spec, arr)
        self.download_chunks(man, on_chunk)

    def read_l1(self, man: Manifest) -> list[tuple[TensorSpec, np.ndarray]]:
        """Every L1 part of the document, verified (one GET of `l1.bin`)."""
        rec = man.record
        l1_total = sum(s.nbytes for s in rec.l1)
        try:
            buf = self.get_range(f"{self.doc_dir(rec.doc_id)}/{L1_OBJECT}", 0, l1_total) if l1_total else memoryview(b"")
        except FileNotFoundError as e:
            raise DataLoss(f"document {rec.doc_id} is published in {self.url} but an object is missing: {e}") from None
        out: list[tuple[TensorSpec, np.ndarray]] = []
        self._unpack_l1(rec, buf, lambda spec, arr: out.append((spec, arr)))
        return out

    def download_chunks(self, man: Manifest, on_chunk: Callable[[int, np.ndarray], None],
                        claim: Callable[[int, int], list[tuple[int, int]]] | None = None,
                        take: Callable[[int], np.ndarray | None] | None = None,
                        gate: Callable[[], None] | None = None) -> None:
        """Every chunk in order, each verified before `on_chunk`. With a read-through in progress (see
        read_through.py), `claim(first, stop)` returns the runs of chunks of a range still to be read here
        (others were asked for ahead of it), `take(c)` waits for a chunk read ahead, and `gate()` blocks
        while requests asked ahead are in flight (they go first)."""
        rec, L = man.record, man.record.meta.layout
        window = 2 * self.config.parallel
        todo = self._chunk_ranges(man)
        futures: dict[int, Future] = {}  # first chunk of a submitted run -> its GET
        runs: dict[int, int] = {}  # first -> stop of each run submitted here and not consumed yet
        nxt, covered = 0, 0  # next range of `todo` to submit; chunks before `covered` are submitted or claimed

        def submit_more() -> None:
            nonlocal nxt, covered
            while nxt < len(todo) and len(futures) < window:
                if gate is not None:
                    gate()
                path, start, _end, first, stop = todo[nxt]
                nxt, covered = nxt + 1, stop
                offs = chunk_offsets(L, first, stop)
                for a, b in (claim(first, stop) if claim is not None else [(first, stop)]):
                    futures[a] = self._pool.submit(self.get_range, path, start + offs[a - first], start + offs[b - first])
                    runs[a] = b

        try:
            c = 0
            while c < L.n_chunks:
                if c >= covered:
                    submit_more()
                if c not in runs:  # asked for ahead of this download: it was read there
                    arr = take(c) if take is not None else None
                    if arr is None:
                        raise DataLoss(f"chunk {c} of document {rec.doc_id} was not read")
                    on_chunk(c, arr)
                    c += 1
                    continue
                stop = runs.pop(c)
                buf = futures.pop(c).result()
                submit_more()
                for cc, arr in self.unpack_chunks(rec, buf, c, stop):
                    on_chunk(cc, arr)
                c = stop
        except FileNotFoundError as e:
            raise DataLoss(f"document {rec.doc_id} is published in {self.url} but an object is missing: {e}") from None
        finally:
            for f in futures.values():
                f.cancel()

    def unpack_chunks(self, rec: DocRecord, buf: memoryview, first: int, stop: int) -> list[tuple[int, np.ndarray]]:
        """The chunks [first, stop) of a ranged GET's bytes, each checked against its per-layer CRC32C."""
        L = rec.meta.layout
        offs = chunk_offsets(L, first, stop)
        out = []
        for j, c in enumerate(range(first, stop)):
            arr = np.frombuffer(buf[offs[j]:offs[j + 1]], dtype=L.np_dtype).reshape(L.chunk_shape(c))
            bad = [i for i, (a, b) in enumerate(zip(layer_crcs(arr), rec.chunk_crcs[c])) if a != b]
            if bad:
                raise DataLoss(f"chunk {c} of document {rec.doc_id} in {self.url} failed its checksum "
                               f"(layers {bad}); refusing to return it")
            out.append((c, arr))
        return out

    def read_chunks(self, man: Manifest, chunk_ids: list[int]) -> list[tuple[list[int], Future]]:
        """Ranged GETs of just these chunks, started now on their own threads (ahead of any whole-document
        download): contiguous chunks of one shard share a GET of up to `range_bytes`. Returns each GET's
        chunk ids with a future of their verified arrays (DataLoss if damaged or missing)."""
        rec, L = man.record, man.record.meta.layout
        starts = man.shard_starts + [L.n_chunks]
        ids = sorted(set(int(c) for c in chunk_ids))
        groups: list[list[int]] = []
        for c in ids:
            g = groups[-1] if groups else None
            if (g and c == g[-1] + 1 and _shard_of(starts, c) == _shard_of(starts, g[0])
                    and sum(L.chunk_nbytes(x) for x in g) + L.chunk_nbytes(c) <= self.config.range_bytes):
                g.append(c)
            else:
                groups.append([c])
        out = []
        for g in groups:
            s = _shard_of(starts, g[0])
            offs = chunk_offsets(L, starts[s], g[-1] + 1)
            path = f"{self.doc_dir(rec.doc_id)}/shard-{s:05d}.bin"
            a, b, first, stop = offs[g[0] - starts[s]], offs[-1], g[0], g[-1] + 1

            def one(path=path, a=a, b=b, first=first, stop=stop):
                try:
                    return [arr for _, arr in self.unpack_chunks(rec, self.get_range(path, a, b), first, stop)]
                except FileNotFoundError as e:
                    raise DataLoss(f"document {rec.doc_id} is published in {self.url} but an object is "
                                   f"missing: {e}") from None
            out.append((g, self._urgent.submit(one)))
            self._count(ahead_gets=1)
        return out

    def _chunk_ranges(self, man: Manifest) -> list[tuple[str, int, int, int, int]]:
        """(path, start, end, first_chunk, stop_chunk) of every ranged GET, in chunk order."""
        L, d = man.record.meta.layout, self.doc_dir(man.record.doc_id)
        starts = man.shard_starts + [L.n_chunks]
        out = []
        for s in range(len(man.shard_starts)):
            first, stop = starts[s], starts[s + 1]
            offs = chunk_offsets(L, first, stop)
            a = first
            while a < stop:
                b = a + 1
                while b < stop and offs[b + 1 - first] - offs[a - first] <= self.config.range_bytes:
                    b += 1
                out.append((f"{d}/shard-{s:05d}.bin", offs[a - first], offs[b - first], a, b))
                a = b
        return out

    def _unpack_l1(self, rec: DocRecord, buf: memoryview, on_l1: Callable[[TensorSpec, np.ndarray], None]) -> None:
        pos = 0
        for spec in rec.l1:
            raw = buf[pos:pos + spec.nbytes]
            pos += spec.nbytes
            if crc32c(raw) != spec.crc32c:
                raise DataLoss(f"L1 part {spec.name!r} of document {rec.doc_id} in {self.url} failed its checksum")
            on_l1(spec, np.frombuffer(raw, dtype=spec.np_dtype).reshape(spec.shape))

    def list(self) -> list[DocMeta]:
        """The meta of every published document (manifests read in parallel, each once per version)."""
        import obstore

        try:
            objects = [m for batch in obstore.list(self.store, "docs/") for m in batch]
        except Exception as e:  # noqa: BLE001
            self._count(errors=1)
            raise StoreUnavailable(f"object store {self.url}: LIST failed: {e}") from None
        manifests = {m["path"]: m["e_tag"] for m in objects if m["path"].endswith("/" + MANIFEST)}

        def meta(path: str) -> DocMeta | None:
            cached = self._manifests.get(path)
            if cached is not None and cached[0] == manifests[path]:
                return cached[1]
            try:
                m = Manifest.from_json(self.get_object(path)).record.meta
            except (FileNotFoundError, DataLoss, ValueError, KeyError, TypeError) as e:
                log.warning("skipping %s in %s: %s", path, self.url, e)
                return None
            self._manifests[path] = (manifests[path], m)
            return m

        metas = list(self._pool.map(meta, sorted(manifests)))
        with self._lock:
            for p in set(self._manifests) - set(manifests):
                self._manifests.pop(p, None)
        return [m for m in metas if m is not None]

    def delete(self, doc_id: str) -> bool:
        """Remove the document from the bucket, manifest first (readers stop seeing it at once), then its
        other objects. True if it was published there."""
        import obstore

        d = self.doc_dir(doc_id)
        try:
            self._call(f"HEAD {d}/{MANIFEST}", obstore.head, f"{d}/{MANIFEST}")
            existed = True
        except FileNotFoundError:
            existed = False
        if existed:
            self._call(f"DELETE {d}/{MANIFEST}", obstore.delete, f"{d}/{MANIFEST}")
        try:
            rest = [m["path"] for batch in obstore.list(self.store, d + "/") for m in batch]
        except Exception as e:  # noqa: BLE001
            self._count(errors=1)
            raise StoreUnavailable(f"object store {self.url}: LIST {d}/ failed: {e}") from None
        if rest:
            self._call(f"DELETE {d}/*", obstore.delete, rest)
        self._count(deletes=1 + len(rest) if existed else len(rest))
        return existed

    def close(self) -> None:
        self._urgent.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)


class PublishingStaging(Staging):
    """A local disk staging that also publishes the document: shards upload while the put goes on, the
    manifest once everything else is in the bucket (`publish`); only then does the store commit locally."""

    def __init__(self, tier: ObjectTier, local: Staging, meta: DocMeta, l1: list[TensorSpec]):
        self.tier, self.local, self.meta = tier, local, meta
        L = meta.layout
        self._dir = tier.doc_dir(meta.doc_id)
        self._per_shard = max(1, tier.config.shard_bytes // max(1, L.chunk_nbytes(0)))
        self._shard: list[bytes] = []
        self._shard_starts: list[int] = []
        self._l1: dict[str, bytes] = {}
        self._uploads: list[Future] = []
        self._sem = threading.Semaphore(2)  # shards in flight: bounds the memory a put holds

    def write_l1(self, spec: TensorSpec, arr: np.ndarray) -> None:
        self.local.write_l1(spec, arr)
        self._l1[spec.name] = arr.tobytes()

    def write_chunk(self, c: int, chunk: np.ndarray) -> None:
        self.local.write_chunk(c, chunk)
        if not self._shard:
            self._shard_starts.append(c)
        self._shard.append(chunk.tobytes())
        if len(self._shard) == self._per_shard:
            self._flush_shard()

    def _flush_shard(self) -> None:
        if not self._shard:
            return
        data, s = b"".join(self._shard), len(self._shard_starts) - 1
        self._shard = []
        self._check_uploads()
        self._sem.acquire()

        def upload():
            try:
                self.tier.put_object(f"{self._dir}/shard-{s:05d}.bin", data)
            finally:
                self._sem.release()
        self._uploads.append(self.tier._pool.submit(upload))

    def _check_uploads(self) -> None:
        for f in [f for f in self._uploads if f.done()]:
            f.result()  # raises the upload's error

    def publish(self, record: DocRecord) -> None:
        """Upload what is left, then the manifest: from here on every daemon can read the document."""
        self._flush_shard()
        for f in self._uploads:
            f.result()
        self.tier.put_object(f"{self._dir}/{L1_OBJECT}", b"".join(self._l1[s.name] for s in record.l1))
        rec = DocRecord(replace(record.meta, pinned=False), record.l1, record.chunk_crcs)
        self.tier.put_object(f"{self._dir}/{MANIFEST}", Manifest(rec, self._shard_starts).to_json())

    def commit(self, record: DocRecord) -> None:
        self.local.commit(record)

    def abort(self) -> None:
        for f in self._uploads:
            f.cancel()
        self.local.abort()


def _shard_of(starts: list[int], c: int) -> int:
    """The shard holding chunk c (`starts`: each shard's first chunk, then n_chunks)."""
    return bisect.bisect_right(starts, c) - 1


def iter_unique(metas: Iterator[DocMeta]) -> list[DocMeta]:
    """Metas deduplicated by id (first wins), oldest first."""
    seen: dict[str, DocMeta] = {}
    for m in metas:
        seen.setdefault(m.doc_id, m)
    return sorted(seen.values(), key=lambda m: (m.created, m.doc_id))
