"""`acre serve` as a process: the exposure check, several workers on one daemon (concurrent answers equal
answers alone, metrics of every worker, a worker killed mid-answer), a daemon that restarts, and a
server with its own daemon, TLS and a key that drains in-flight answers on SIGTERM."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import assert_clean_error, run_acre
from tests.model.tiny import DOC
from tests.serve.conftest import local_answer
from tests.serve.support import Server, sse_events

Q = ["What colour is the sky?", "Which sentence mentions the sea?", "What colour is the grass?",
     "What does sentence 7 say?"]
DOC2 = DOC.replace("blue", "violet").replace("Sentence", "Line")
SAME = ("answer", "policy", "refilled_chunks", "kv_ratio", "n_active", "n_new_tokens")


def _same(got: dict, want: dict) -> None:
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}


def _ok_total(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith('acre_questions_total{outcome="ok"'))


def _gauge(metrics_text: str, name: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines() if line.startswith(name + " "))


def test_non_loopback_host_without_key_refuses_to_start(tiny_folder):
    p = run_acre("serve", "--host", "0.0.0.0", "--model", str(tiny_folder), "--store", "unix:///nowhere.sock",
                 env_extra={"ACRE_API_KEY": ""}, timeout=60)
    assert_clean_error(p, "--insecure")
    assert "api key" in p.stderr.lower()


# ---- two workers on one daemon ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workers2(tiny_folder, daemon, tmp_path_factory):
    with Server(["--model", str(tiny_folder), "--store", daemon.addr, "--workers", "2", "--max-batch", "8"],
                str(tmp_path_factory.mktemp("log") / "serve2.log")) as s:
        yield s


@pytest.fixture(scope="module")
def docs2(workers2):
    with workers2.client() as c:
        return [c.post("/v1/documents", json={"text": t, "name": n}).json() for t, n in ((DOC, "a"), (DOC2, "b"))]


def _questions(docs):
    """16 questions: 2 documents x 4 questions x 2 policies of 4, one in four sampled."""
    policies = [{"policy": "acre"}, {"policy": "full"}, {"policy": "fixed-k", "knobs": {"fixed_k": 2}},
                {"policy": "acre", "knobs": {"k_max": 2}, "temperature": 1.0, "seed": 11}]
    out = []
    for d, doc in enumerate(docs):
        for i, q in enumerate(Q):
            for pol in (policies[(i + d) % 4], policies[(i + d + 2) % 4]):
                out.append({"doc_id": doc["doc_id"], "question": q, "max_new_tokens": 5, **pol})
    return out


def test_two_workers_answer_16_concurrent_questions_as_alone(workers2, docs2, local):
    questions = _questions(docs2)
    assert len(questions) == 16
    alone = [local_answer(local, q["doc_id"], q) for q in questions]

    def ask(body):  # a connection of its own each, so that both workers take some
        r = httpx.post(workers2.url + "/v1/ask", json=body, timeout=300)
        return r.status_code, r.json(), r.headers["x-acre-worker"]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, questions))
    for (status, body, _), want in zip(got, alone):
        assert status == 200, body
        _same(body, want)
    assert len({pid for _, _, pid in got}) == 2, "both workers answered"
    # any worker's /metrics counts every worker's questions
    for _ in range(4):
        assert _ok_total(httpx.get(workers2.url + "/metrics", timeout=30).text) >= 16


def test_worker_killed_mid_answer_fails_that_request_only(workers2, docs2):
    long_ask = {"doc_id": docs2[0]["doc_id"], "question": Q[0], "max_new_tokens": 1200, "stream": True}
    with httpx.Client(timeout=60) as c, c.stream("POST", workers2.url + "/v1/ask", json=long_ask) as r:
        pid = int(r.headers["x-acre-worker"])
        lines = r.iter_lines()
        assert next(l for l in lines if l.startswith("data: "))
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            for _ in lines:
                pass
    short = {"doc_id": docs2[1]["doc_id"], "question": Q[1], "max_new_tokens": 3}
    for _ in range(4):  # the other worker answers at once
        r = httpx.post(workers2.url + "/v1/ask", json=short, timeout=60)
        assert r.status_code == 200 and int(r.headers["x-acre-worker"]) != pid
    # the supervisor starts a new worker in the killed one's place
    seen, deadline = set(), time.monotonic() + 120
    while len(seen) < 2 and time.monotonic() < deadline:
        r = httpx.get(workers2.url + "/health", timeout=30)
        assert r.status_code == 200
        seen.add(r.json()["pid"])
        time.sleep(0.1)
    assert len(seen) == 2 and pid not in seen
    m = httpx.get(workers2.url + "/metrics", timeout=30).text
    assert _gauge(m, "acre_batch_size") == 0  # the killed worker's live gauges no longer count


# ---- a daemon that goes away and comes back ---------------------------------------------------------


def test_daemon_restart_gives_503_then_recovers(tiny_folder, tmp_path, lone_daemon):
    daemon = lone_daemon
    with Server(["--model", str(tiny_folder), "--store", daemon.addr], str(tmp_path / "serve.log")) as server, \
            server.client(timeout=60) as c:
        doc = c.post("/v1/documents", json={"text": DOC}).json()
        ask = {"doc_id": doc["doc_id"], "question": Q[0], "max_new_tokens": 4}
        assert c.post("/v1/ask", json=ask).status_code == 200
        daemon.kill9()
        for path, body in (("/v1/ask", ask), ("/v1/ask", {**ask, "policy": "full"}), ("/v1/documents", None)):
            r = c.post(path, json=body) if body else c.get(path)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "store_unavailable" and "unavailable" in r.json()["error"]["message"]
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["store"] == "unreachable"
        daemon.start()
        deadline = time.monotonic() + 30
        while c.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        full = c.post("/v1/ask", json={**ask, "policy": "full"})  # fetches every chunk from the new daemon
        assert full.status_code == 200, full.text
        assert full.json()["fetched_bytes"] > 0
        assert c.post("/v1/ask", json=ask).status_code == 200


# ---- its own daemon, TLS, a key, SIGTERM --------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_own_daemon_tls_and_sigterm_drain(tiny_folder, tmp_path, tls_files):
    home = tmp_path / "home"
    with Server(["--model", str(tiny_folder), "--tls-cert", tls_files[0], "--tls-key", tls_files[1]],
                str(tmp_path / "serve.log"), api_key="k", scheme="https",
                env={"ACRE_HOME": str(home), "ACRE_STORE": ""}) as server:
        sock = home / "run" / f"serve-{server.proc.pid}.sock"
        assert sock.exists() and stat.S_IMODE((home / "run").stat().st_mode) == 0o700
        with server.client(timeout=60) as c:
            doc = c.post("/v1/documents", json={"text": DOC}).json()
            long_ask = {"doc_id": doc["doc_id"], "question": Q[0], "max_new_tokens": 300, "stream": True}
            with c.stream("POST", "/v1/ask", json=long_ask) as r:
                lines = r.iter_lines()
                assert next(l for l in lines if l.startswith("data: "))
                server.proc.send_signal(signal.SIGTERM)
                events = sse_events(lines)  # the answer in flight is finished, not cut
        assert events[-1] == "[DONE]" and events[-2]["answer"]["n_new_tokens"] == 300
        assert server.proc.wait(60) == 0
        assert not sock.exists()  # its daemon stopped too
        assert "Traceback" not in server.log()
    # the documents stay in $ACRE_HOME/store: the embedded store opens them now the daemon is gone
    ls = run_acre("store", "ls", "--json", env_extra={"ACRE_HOME": str(home)})
    assert doc["doc_id"] in ls.stdout
