"""/metrics of a real daemon (metrics.py): Prometheus text whose counters move with the calls made;
`acre store health` exit codes; the start-up check of the shared-memory folder's room (shm_space.py)."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from acre_store import DocumentNotFound
from acre_store import shm_space

from .support import ROOT, TINY, make_doc


def metrics_url(daemon, timeout: float = 10.0) -> str:
    """The /metrics address the daemon printed at start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"metrics on (http://\S+/metrics)", daemon.log())
        if m:
            return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no metrics address in the log:\n{daemon.log()}")


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape, parsed as Prometheus text."""
    with urllib.request.urlopen(url, timeout=10) as r:
        return parse(r.read().decode())


def parse(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_the_calls(daemon_factory):
    d = daemon_factory("lmdb", "--metrics-port", "0")
    url = metrics_url(d)
    assert url.startswith("http://127.0.0.1:")
    before = scrape(url)
    assert value(before, "acre_store_puts_total", outcome="stored") == 0
    doc = make_doc(TINY)
    n = TINY.n_chunks
    with d.client(data_plane=False, shared=False) as c:  # over gRPC: every call is timed
        c.put(doc.meta, doc.l1, doc.chunks)
        list(c.fetch(doc.doc_id, range(n)))
        list(c.fetch(doc.doc_id, range(n)))
        c.info(doc.doc_id)
        with pytest.raises(DocumentNotFound):
            c.info("0" * 64)
    with d.client() as c:  # the data socket and shared memory
        list(c.fetch(doc.doc_id, [0]))
    after = scrape(url)
    assert value(after, "acre_store_puts_total", outcome="stored") == 1
    assert value(after, "acre_store_fetched_chunks_total") == 2 * n + 1
    assert value(after, "acre_store_fetched_bytes_total") > 0
    assert value(after, "acre_store_tier_reads_total", tier="disk") >= n  # the first fetch read the disk
    assert value(after, "acre_store_tier_reads_total", tier="ram") >= n  # the second hit RAM
    assert value(after, "acre_store_ram_lookups_total", outcome="hit") >= n
    assert 0 < value(after, "acre_store_ram_hit_ratio") < 1
    assert value(after, "acre_store_data_socket_calls_total") == 1
    assert value(after, "acre_store_shared_chunks_total") == 1
    assert value(after, "acre_store_documents", tier="disk") == 1
    assert value(after, "acre_store_used_bytes", tier="disk") > 0
    assert value(after, "acre_store_rpcs_total", method="Put", code="OK") == 1
    assert value(after, "acre_store_rpcs_total", method="Info", code="OK") == 1
    assert value(after, "acre_store_rpcs_total", method="Info", code="NOT_FOUND") == 1
    assert value(after, "acre_store_rpcs_total", method="Fetch", code="OK") == 2
    assert value(after, "acre_store_rpc_duration_seconds_count", method="Fetch") == 2
    assert value(after, "acre_store_rpc_duration_seconds_bucket", method="Put", le="+Inf") == 1
    assert value(after, "acre_store_checksum_failures_total") == 0
    with d.client() as c:
        c.delete(doc.doc_id)
    final = scrape(url)
    assert value(final, "acre_store_deletes_total") == 1
    assert value(final, "acre_store_documents", tier="disk") == 0


def test_metrics_off_by_default(daemon_factory):
    d = daemon_factory("lmdb")
    assert "metrics on" not in d.log()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "acre_store.cli", "store", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_health_exit_codes(daemon_factory):
    d = daemon_factory("lmdb")
    r = run_cli("health", "--store", d.addr)
    assert r.returncode == 0 and r.stdout.strip() == f"{d.addr}: SERVING", (r.stdout, r.stderr)
    d.stop()
    r = run_cli("health", "--store", d.addr)
    assert r.returncode == 1 and r.stdout.count("\n") == 1 and "UNREACHABLE" in r.stdout, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def test_shm_shortfall_message(monkeypatch):
    class Small:
        f_bavail, f_frsize = 16, 1 << 20  # 16 MiB free

    monkeypatch.setattr(shm_space.os, "statvfs", lambda path: Small)
    msg = shm_space.shm_shortfall("/dev/shm", 4 << 30)
    assert "/dev/shm has 16 MiB free" in msg and "--ram-bytes 4.0 GiB" in msg
    assert "--shm-size=4g" in msg and "--no-shared" in msg and "lower --ram-bytes" in msg
    assert shm_space.shm_shortfall("/dev/shm", 8 << 20) is None


def test_daemon_says_once_when_shm_is_too_small(daemon_factory):
    d = daemon_factory("lmdb", "--ram-bytes", "64T")  # more than any /dev/shm has free
    with d.client() as c:
        doc = make_doc(TINY)
        c.put(doc.meta, doc.l1, doc.chunks)
    log = d.log()
    assert log.count("shared-memory folder") == 1 and "--shm-size=" in log, log


def test_metrics_port_in_use_stops_the_start(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        r = run_cli("serve", "--data", str(tmp_path / "d"), "--listen", f"unix://{tmp_path}/s.sock",
                    "--metrics-port", str(busy.getsockname()[1]))
    finally:
        busy.close()
    assert r.returncode == 1 and "cannot serve metrics" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s.sock").exists() and not (tmp_path / "s.sock.data").exists()


def test_another_tier_reports_under_the_same_families():
    """The object-store tier's hook: an `object` stats section, or add_tier_source (no daemon needed)."""
    from types import SimpleNamespace as NS

    from prometheus_client import generate_latest

    from acre_store.metrics import StoreMetrics

    st = NS(ram=NS(hits=3, misses=1, evictions=0, used_bytes=10, capacity_bytes=100, entries=2),
            disk=NS(reads=1, evictions=0, checksum_failures=0, used_bytes=5, capacity_bytes=0),
            ops=NS(fetched_chunks=4, fetched_bytes=40, puts=1, put_noops=0, put_aborts=0, deletes=0),
            shared=None, data_plane=None, n_docs=1, n_pinned=0, object={"reads": 7, "requests": 9, "errors": 1})
    m = StoreMetrics(lambda: st)
    m.add_tier_source("object", lambda: {**st.object, "used_bytes": 123, "read_bytes": 70})
    samples = parse(generate_latest(m.registry).decode())
    assert value(samples, "acre_store_tier_reads_total", tier="object") == 7
    assert value(samples, "acre_store_tier_read_bytes_total", tier="object") == 70
    assert value(samples, "acre_store_used_bytes", tier="object") == 123
    assert value(samples, "acre_store_object_requests_total") == 9
    assert value(samples, "acre_store_object_errors_total") == 1
    assert value(samples, "acre_store_ram_hit_ratio") == 0.75


def test_the_object_store_section_is_exported():
    """StoreStats.object_store (the S3 tier's counters) appears under tier="object" and the object families."""
    from types import SimpleNamespace as NS

    from prometheus_client import generate_latest

    from acre_store.metrics import StoreMetrics

    st = NS(ram=NS(hits=1, misses=1, evictions=0, used_bytes=10, capacity_bytes=100, entries=2),
            disk=NS(reads=1, evictions=0, checksum_failures=0, used_bytes=5, capacity_bytes=0),
            ops=NS(fetched_chunks=4, fetched_bytes=40, puts=1, put_noops=0, put_aborts=0, deletes=0),
            shared=None, data_plane=None, n_docs=1, n_pinned=0,
            object_store={"url": "s3://b/p", "gets": 5, "get_bytes": 500, "puts": 3, "put_bytes": 300,
                          "deletes": 1, "errors": 2, "read_throughs": 4, "landing": 0})
    samples = parse(generate_latest(StoreMetrics(lambda: st).registry).decode())
    assert value(samples, "acre_store_tier_reads_total", tier="object") == 4
    assert value(samples, "acre_store_tier_read_bytes_total", tier="object") == 500
    assert value(samples, "acre_store_object_requests_total") == 9
    assert value(samples, "acre_store_object_errors_total") == 2
