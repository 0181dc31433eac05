"""Refill mechanics: the device chunk cache (LRU by bytes) and layer-group pipelining of fetches."""
from __future__ import annotations

import time

import pytest
import torch

from acre_model.device_chunk_cache import DeviceChunkCache
from tests.model.tiny import DOC, make_tiny_folder


def test_device_chunk_cache_evicts_least_recently_used_by_bytes():
    t = lambda: torch.zeros(256)  # 1 KiB each
    cc = DeviceChunkCache(3 * 1024)
    for c in range(3):
        cc.put("d", c, t())
    assert cc.get("d", 0) is not None  # 0 is now the most recently used
    cc.put("d", 3, t())  # evicts 1
    assert cc.get("d", 1) is None and cc.get("d", 0) is not None
    assert cc.nbytes == 3 * 1024 and cc.evictions == 1
    cc.put("big", 0, torch.zeros(4096))  # larger than the cache: not kept, nothing evicted
    assert cc.get("big", 0) is None and cc.evictions == 1
    cc.drop_doc("d")
    assert cc.nbytes == 0


class SlowStore:
    """Wraps a store; each fetch call (one layer group) takes `delay` seconds. Records arrival times."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay
        self.arrivals: list[tuple[tuple[int, int], float]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fetch(self, doc_id, chunk_ids, layers=None):
        time.sleep(self.delay)
        out = list(self.inner.fetch(doc_id, chunk_ids, layers=layers))
        self.arrivals.append((layers, time.perf_counter()))
        yield from out


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, default_model_path):
    from acre_model.engine import Engine
    from acre_store import EmbeddedStore

    root = tmp_path_factory.mktemp("refill")
    eng = Engine.from_pretrained(str(make_tiny_folder(root / "m", default_model_path, seed=5)), device="cpu")
    store = EmbeddedStore(str(root / "s"))
    yield eng, store
    store.close()


def test_layer_groups_overlap_fetch_and_compute(tiny_store, monkeypatch):
    """Layer 0 computes while later layer groups are still in flight."""
    from acre_model import chunk_fetcher
    from acre_model.active_layout import ActiveLayout

    eng, store = tiny_store
    info = eng.ingest(DOC, store=store)
    slow = SlowStore(store, delay=0.3)
    installed: dict[int, float] = {}
    orig = ActiveLayout.assemble

    def spy(self, layer, doc, chunk_layer):
        out = orig(self, layer, doc, chunk_layer)
        installed[layer] = time.perf_counter()
        return out

    monkeypatch.setattr(ActiveLayout, "assemble", spy)
    monkeypatch.setattr(chunk_fetcher, "GROUP_LAYERS", 1)
    eng.reset_caches()  # cold device cache: everything comes from the (slow) store
    a = eng.ask(info.doc_id, "What colour is the sea?", policy="full", store=slow, max_new_tokens=2)
    assert len(slow.arrivals) == eng.cfg.num_hidden_layers  # one fetch per layer group
    last_arrival = slow.arrivals[-1][1]
    assert installed[0] < last_arrival  # layer 0 ran before the last group had arrived
    assert a.fetch_s > 0 and a.fetch_wait_s < a.fetch_s
    # a second question on the same chunks is served from the device chunk cache: no fetch at all
    before = len(slow.arrivals)
    b = eng.ask(info.doc_id, "What colour is the sea?", policy="full", store=slow, max_new_tokens=2)
    assert len(slow.arrivals) == before and b.fetched_bytes == 0 and b.answer == a.answer


def test_int8_index_ranks_like_fp16(tiny_store):
    from dataclasses import replace

    from acre_model.doc_state import LayoutConfig

    eng, store = tiny_store
    q = "Which sentence says the grass is green?"
    a = eng.ingest(DOC, store=store, layout=LayoutConfig())
    b = eng.ingest(DOC, store=store, layout=replace(LayoutConfig(), index_int8=True))
    assert a.doc_id != b.doc_id  # the layout is part of the content address
    parts = store.get_l1(b.doc_id)
    assert parts["index_keys"].dtype.name == "int8" and "index_scale" in parts
    ra = eng.ask(a.doc_id, q, store=store, max_new_tokens=1)
    rb = eng.ask(b.doc_id, q, store=store, max_new_tokens=1)
    assert ra.refilled_chunks == rb.refilled_chunks
    assert rb.index_share < ra.index_share
