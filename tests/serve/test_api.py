"""The HTTP API of one real `acre serve` process (tiny model, real daemon, API key, small body limit):
answers equal `Engine.ask` in-process, streaming and the openai client agree, bad input gets its status
and a message naming the field, and the server keeps answering."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.model.tiny import DOC
from tests.serve.conftest import local_answer
from tests.serve.support import Server, sse_events

KEY = "test-key-123"
Q = ["What colour is the sky?", "Which sentence mentions the sea?", "What colour is the grass?"]
SAME = ("answer", "policy", "refilled_chunks", "kv_ratio", "k", "mode", "n_active", "n_new_tokens", "doc_id",
        "reselected_chunks")
# re-selection every 2 tokens, with a share every unattended chunk reaches: chunks join while it decodes
RESELECT = {"question": Q[1], "knobs": {"k_max": 1, "neighbors": 0, "reselect_min": 1e-9}, "reselect": 2,
            "max_new_tokens": 6}
CASES = [
    {"question": Q[0], "max_new_tokens": 6},
    {"question": Q[1], "policy": "full", "max_new_tokens": 6},
    {"question": Q[2], "policy": "fixed-k", "knobs": {"fixed_k": 3, "mode": "exact"}, "max_new_tokens": 5},
    {"question": Q[1], "temperature": 1.0, "top_p": 0.9, "seed": 3, "max_new_tokens": 6},
    {"question": Q[0], "policy": "streaming", "knobs": {"budget": 0.3}, "answer_prefix": "The sky is",
     "max_new_tokens": 4},
    {"question": Q[2], "stop": ["pending"], "max_new_tokens": 6},
    RESELECT,
]


@pytest.fixture(scope="module")
def server(tiny_folder, daemon, tmp_path_factory):
    # --max-open-docs 2: three documents are asked in turn (`colours` and the library test's two): L1s are evicted
    with Server(["--model", str(tiny_folder), "--store", daemon.addr, "--max-body-bytes", "64K", "--max-batch", "2",
                 "--max-open-docs", "2"],
                str(tmp_path_factory.mktemp("log") / "serve.log"), api_key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def doc(http):
    r = http.post("/v1/documents", json={"text": DOC, "name": "colours"})
    assert r.status_code == 200, r.text
    return r.json()


def _same(got: dict, want: dict) -> None:
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}


def test_health_and_metrics(http, doc):
    h = httpx.get(http.base_url.join("/health"), timeout=10)  # no key needed
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["store"] == "ok"
    assert h.json()["model"] == "model"
    assert http.post("/v1/ask", json={"doc_id": doc["doc_id"], "question": Q[0], "max_new_tokens": 3}).status_code == 200
    m = http.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    for name in ("acre_questions_total", "acre_ask_ttft_seconds_bucket", "acre_ask_total_seconds_count",
                 "acre_decode_tokens_total", "acre_batch_size", "acre_queue_depth", "acre_refill_fetched_bytes_total",
                 "acre_refill_fetch_wait_seconds_count", "acre_device_cache_hits_total",
                 "acre_device_cache_misses_total", "acre_kv_ratio_bucket", "acre_ingest_seconds_count",
                 "acre_ingest_tokens_total"):
        assert name in m.text, name
    assert 'acre_questions_total{outcome="ok",policy="acre"}' in m.text


def test_documents(http, doc):
    again = http.post("/v1/documents", json={"text": DOC, "name": "colours"}).json()
    assert again["doc_id"] == doc["doc_id"] and again["existed"] and not doc["existed"]
    other = DOC.replace("blue", "violet")
    up = http.post("/v1/documents", files={"file": ("violet.txt", other.encode(), "text/plain")})
    assert up.status_code == 200, up.text
    info = up.json()
    assert info["name"] == "violet.txt" and info["n_tokens"] > 100
    listed = {d["doc_id"]: d for d in http.get("/v1/documents").json()["documents"]}
    assert listed[doc["doc_id"]]["name"] == "colours" and listed[doc["doc_id"]]["n_chunks"] == doc["n_chunks"]
    assert http.get(f"/v1/documents/{info['doc_id'][:8]}").json()["doc_id"] == info["doc_id"]
    assert http.get("/v1/documents/colours").json()["n_tokens"] == doc["n_tokens"]
    assert http.delete("/v1/documents/violet.txt").json() == {"deleted": info["doc_id"]}
    gone = http.get(f"/v1/documents/{info['doc_id']}")
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found"
    assert http.delete(f"/v1/documents/{info['doc_id']}").status_code == 404


def test_ingest_progress_is_readable_while_it_runs(http, server):
    text = " ".join(f"Line {i}: the value of item {i} is {i * 7 % 13}." for i in range(100))  # ~1.6k tokens
    result = {}
    t = threading.Thread(target=lambda: result.update(r=http.post("/v1/documents", json={"text": text, "name": "long"})))
    t.start()
    seen = []
    with server.client() as c2:
        while t.is_alive():
            seen += c2.get("/v1/ingests").json()["ingests"]
            time.sleep(0.01)
    t.join()
    assert result["r"].status_code == 200, result["r"].text
    n = result["r"].json()["n_tokens"]
    assert any(p["name"] == "long" and p["n_tokens"] in (0, n) and 0 <= p["done_tokens"] <= n for p in seen), seen
    assert http.get("/v1/ingests").json() == {"ingests": []}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.get('policy', 'acre')}-{c['question'][:12]}")
def test_ask_equals_engine_ask(http, doc, local, case):
    r = http.post("/v1/ask", json={"doc_id": doc["doc_id"], **case})
    assert r.status_code == 200, r.text
    _same(r.json(), local_answer(local, doc["doc_id"], case))
    assert bool(r.json()["reselected_chunks"]) == bool(case.get("reselect"))
    if case.get("reselect"):  # counted in the worker's metrics
        line = [x for x in http.get("/metrics").text.splitlines()
                if x.startswith('acre_reselected_chunks_total{policy="acre"}')]
        assert line and float(line[0].split()[-1]) >= len(r.json()["reselected_chunks"]), line


def test_ask_by_name_and_prefix(http, doc):
    by_name = http.post("/v1/ask", json={"doc_id": "colours", **CASES[0]}).json()
    by_prefix = http.post("/v1/ask", json={"doc_id": doc["doc_id"][:6], **CASES[0]}).json()
    _same(by_name, by_prefix)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5]], ids=["greedy", "sampled", "stop"])
def test_streaming_deltas_make_the_answer(http, doc, case):
    whole = http.post("/v1/ask", json={"doc_id": doc["doc_id"], **case}).json()
    with http.stream("POST", "/v1/ask", json={"doc_id": doc["doc_id"], **case, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    final = events[-2]["answer"]
    deltas = [e["delta"] for e in events[:-2]]
    assert "".join(deltas).strip() == whole["answer"] == final["answer"]
    _same(final, whole)


def test_batch_equals_one_by_one(http, doc):
    questions = [Q[0], {"question": Q[1], "policy": "full"}, {"question": Q[2], "max_new_tokens": 3},
                 {"question": Q[1], "temperature": 1.0, "seed": 5}, Q[2], {**RESELECT, "max_new_tokens": 5}]
    r = http.post("/v1/ask/batch", json={"doc_id": "colours", "questions": questions, "max_new_tokens": 5})
    assert r.status_code == 200, r.text
    got = r.json()["answers"]
    assert len(got) == len(questions)
    for q, a in zip(questions, got):
        body = {"question": q} if isinstance(q, str) else q
        alone = http.post("/v1/ask", json={"doc_id": doc["doc_id"], "max_new_tokens": 5, **body}).json()
        _same(a, alone)


def test_openai_client(server, doc, local):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    want = local_answer(local, doc["doc_id"], {"question": Q[0], "max_new_tokens": 6})
    extra = {"acre": {"doc_id": "colours", "policy": "acre"}}
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": Q[0]}]
    r = client.chat.completions.create(model="tiny-test", messages=messages, max_tokens=6, extra_body=extra)
    assert r.object == "chat.completion" and r.model == "tiny-test"
    assert r.choices[0].message.content == want["answer"] and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == want["n_new_tokens"]
    assert r.usage.prompt_tokens > want["n_active"]
    acre = r.to_dict()["acre"]
    assert acre["refilled_chunks"] == want["refilled_chunks"]

    chunks = list(client.chat.completions.create(model="tiny-test", messages=messages, max_tokens=6, extra_body=extra,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["answer"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == want["n_new_tokens"]

    # the acre extension's reselect: the same answer and re-selected chunks as Engine.ask
    want = local_answer(local, doc["doc_id"], RESELECT)
    extra = {"acre": {"doc_id": "colours", "knobs": RESELECT["knobs"], "reselect": RESELECT["reselect"]}}
    r = client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": RESELECT["question"]}],
                                       max_tokens=RESELECT["max_new_tokens"], extra_body=extra)
    assert r.choices[0].message.content == want["answer"]
    assert r.to_dict()["acre"]["reselected_chunks"] == want["reselected_chunks"] != []

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="x", messages=messages, extra_body={"acre": {"doc_id": "ab" * 20}})
    with pytest.raises(openai.BadRequestError, match="acre"):
        client.chat.completions.create(model="x", messages=messages)


def test_a_question_over_a_library(server, http, doc, local, tmp_path):
    """Documents ingested into a collection; one question over them named as "@NAME", "ID1,ID2" or a list:
    the same answer (sources, refilled and re-selected chunks) as `Engine.ask` over the ids, through
    /v1/ask, the batch, the chat extension and the command line."""
    import openai

    from tests.helpers import run_acre

    other = DOC.replace("blue", "crimson").replace("green", "amber")
    r = http.post("/v1/documents", json={"text": other, "name": "warm", "collection": "shelf"})
    assert r.status_code == 200, r.text
    warm = r.json()["doc_id"]
    f = tmp_path / "third.txt"
    f.write_text(DOC.replace("blue", "teal"))
    env = {"ACRE_API_KEY": KEY, "ACRE_SERVER": server.url}
    p = run_acre("ingest", str(f), "--json", "--name", "cool", "--collection", "shelf", env_extra=env)
    assert p.returncode == 0, p.stderr
    cool = json.loads(p.stdout)["doc_id"]
    ids = [warm, cool]  # the collection, oldest first
    for case in (CASES[0], RESELECT):
        want = json.loads(json.dumps(local_answer(local, ids, case)))  # pairs as JSON lists
        assert want["doc_id"] == ",".join(ids) and want["sources"]
        for ref in ("@shelf", f"{warm[:8]},cool", ["warm", cool]):
            got = http.post("/v1/ask", json={"doc_id": ref, **case})
            assert got.status_code == 200, got.text
            _same(got.json(), want)
            assert got.json()["sources"] == want["sources"]
        assert bool(want["reselected_chunks"]) == bool(case.get("reselect"))
        assert all(d in ids for d, _ in want["refilled_chunks"])
    batch = http.post("/v1/ask/batch", json={"doc_id": "@shelf", "questions": [CASES[0], RESELECT]})
    assert batch.status_code == 200, batch.text
    for case, a in zip([CASES[0], RESELECT], batch.json()["answers"]):
        _same(a, json.loads(json.dumps(local_answer(local, ids, case))))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    c = client.chat.completions.create(model="x", messages=[{"role": "user", "content": Q[0]}], max_tokens=6,
                                       extra_body={"acre": {"doc_id": "@shelf"}})
    assert c.choices[0].message.content == local_answer(local, ids, CASES[0])["answer"]
    p = run_acre("ask", "@shelf", Q[0], "--json", "--max-new-tokens", "6", env_extra=env)
    assert p.returncode == 0, p.stderr
    _same(json.loads(p.stdout), json.loads(json.dumps(local_answer(local, ids, CASES[0]))))
    # bad references: a 4xx naming the field or the document, and the server answers the next question
    for body, status, needle in [({"doc_id": []}, 400, "doc_id"), ({"doc_id": ["warm", " "]}, 400, "doc_id"),
                                 ({"doc_id": "warm,"}, 400, "doc_id"), ({"doc_id": "@nowhere"}, 404, "nowhere"),
                                 ({"doc_id": [warm, "warm"]}, 400, "more than once"),
                                 ({"doc_id": ["warm", "ab" * 20]}, 404, "unknown document")]:
        r = http.post("/v1/ask", json={**body, "question": Q[0], "max_new_tokens": 2})
        assert r.status_code == status and needle in r.json()["error"]["message"], (body, r.text)
    r = http.post("/v1/documents", json={"text": other, "collection": "cellar"})  # stored in shelf already
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("collection:"), r.text
    for bad in ("", "a,b", "  "):
        r = http.post("/v1/documents", json={"text": "Some text.", "collection": bad})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("collection"), r.text
    assert http.post("/v1/ask", json={"doc_id": ids, "question": Q[0], "max_new_tokens": 2}).status_code == 200


LONG_QUESTION = "Why " + "and why " * 800  # more tokens than the tiny model's context leaves

BAD = [
    ("/v1/ask", {"question": ""}, 400, "question"),
    ("/v1/ask", {"question": "   "}, 400, "question"),
    ("/v1/ask", {"question": LONG_QUESTION}, 400, "question"),
    ("/v1/ask", {"question": "x" * 40000}, 400, "question"),
    ("/v1/ask", {}, 400, "question: required"),
    ("/v1/ask", {"question": "q?", "policy": "magic"}, 400, "policy"),
    ("/v1/ask", {"question": "q?", "knobs": {"bogus": 1}}, 400, "knobs"),
    ("/v1/ask", {"question": "q?", "policy": "full", "knobs": {"k_max": 3}}, 400, "knobs"),
    ("/v1/ask", {"question": "q?", "knobs": {"k_max": -2}}, 400, "knobs"),
    ("/v1/ask", {"question": "q?", "k_max": 4}, 400, "k_max: unknown field"),
    ("/v1/ask", {"question": "q?", "temperature": -1}, 400, "temperature"),
    ("/v1/ask", {"question": "q?", "top_p": 0}, 400, "top_p"),
    ("/v1/ask", {"question": "q?", "max_new_tokens": 0}, 400, "max_new_tokens"),
    ("/v1/ask", {"question": "q?", "seed": "abc"}, 400, "seed"),
    ("/v1/ask", {"question": "q?", "stop": [""]}, 400, "stop"),
    ("/v1/ask", {"question": "q?", "reselect": -1}, 400, "reselect"),
    ("/v1/ask", {"question": "q?", "reselect": True}, 400, "reselect"),
    ("/v1/ask", {"question": "q?", "policy": "full", "reselect": 4}, 400, "needs a chunk policy"),
    ("/v1/ask", {"question": "q?", "doc_id": "ab" * 20}, 404, "unknown document"),
    ("/v1/ask", {"question": "q?", "doc_id": "nosuchname"}, 404, "unknown document"),
    ("/v1/ask/batch", {"questions": []}, 400, "questions"),
    ("/v1/ask/batch", {"questions": ["q?", {"question": "q?", "policy": "magic"}]}, 400, "questions[1].policy"),
    ("/v1/ask/batch", {"questions": ["q?", {"question": ""}]}, 400, "questions[1].question"),
    ("/v1/ask/batch", {"questions": ["q?"], "top_p": 2}, 400, "top_p"),
    ("/v1/documents", {"text": ""}, 400, "text"),
    ("/v1/documents", {"txt": "hello"}, 400, "txt: unknown field"),
    ("/v1/documents", {"text": "word " * 3000}, 400, "text: document is"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q?"}]}, 400, "acre: required"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "hi"}], "acre": {"doc_id": "colours"}},
     400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q?"}], "acre": {"doc_id": "colours",
                                                                                       "policy": "magic"}},
     400, "acre.policy"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q?"}], "acre": {"doc_id": "colours"},
                              "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q?"}], "acre": {"doc_id": "colours"},
                              "n": 2}, 400, "n:"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q?"}], "acre": {"doc_id": "colours",
                                                                                       "reselect": -2}},
     400, "acre.reselect"),
]


@pytest.mark.parametrize("path,body,status,needle", BAD, ids=[f"{p}-{n}" for p, _, _, n in BAD])
def test_bad_input_names_the_field(http, doc, path, body, status, needle):
    if path.startswith("/v1/ask") and "doc_id" not in body:
        body = {"doc_id": doc["doc_id"], **body}
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"], err
    assert set(err) == {"type", "message"}
    ok = http.post("/v1/ask", json={"doc_id": doc["doc_id"], "question": Q[0], "max_new_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_malformed_json_and_unknown_routes(http, doc):
    for path in ("/v1/ask", "/v1/documents", "/v1/ask/batch", "/v1/chat/completions"):
        r = http.post(path, content=b'{"question": ', headers={"content-type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"], (path, r.text)
    nf = http.get("/v1/nothing")
    assert nf.status_code == 404 and nf.json()["error"]["type"] == "not_found"
    assert http.get("/v1/ask").status_code == 405


def test_api_key(server, doc):
    url = server.url
    no_key = httpx.post(url + "/v1/ask", json={"doc_id": doc["doc_id"], "question": Q[0]}, timeout=30)
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "unauthorized"
    wrong = httpx.get(url + "/v1/documents", headers={"Authorization": "Bearer " + KEY + "x"}, timeout=30)
    assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]["message"]
    assert httpx.get(url + "/metrics", timeout=30).status_code == 401
    assert httpx.get(url + "/v1/documents", headers={"Authorization": "Bearer " + KEY}, timeout=30).status_code == 200


def test_body_limit(http, doc):
    big = {"text": "x" * (70 << 10)}
    r = http.post("/v1/documents", json=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is found while reading
        for _ in range(80):
            yield b"x" * 1024

    r = http.post("/v1/documents", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert http.post("/v1/ask", json={"doc_id": doc["doc_id"], "question": Q[0], "max_new_tokens": 2}).status_code == 200


def test_disconnect_frees_the_batch_slot(server, http, doc):
    """Both slots (--max-batch 2) taken by long streams; the clients leave after one event each, and
    the slots are free again long before those answers could have finished."""
    long_ask = {"doc_id": doc["doc_id"], "question": Q[0], "max_new_tokens": 1200, "stream": True}
    for _ in range(2):
        with server.client() as c, c.stream("POST", "/v1/ask", json=long_ask) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    assert "delta" in json.loads(line[6:])
                    break
    deadline = time.monotonic() + 5
    while http.get("/health").json()["batch_size"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.get("/health").json()["batch_size"] == 0
    assert 'acre_questions_total{outcome="cancelled",policy="acre"} 2.0' in http.get("/metrics").text
    t = time.monotonic()
    assert http.post("/v1/ask", json={"doc_id": doc["doc_id"], "question": Q[1], "max_new_tokens": 3}).status_code == 200
    assert time.monotonic() - t < 5


def test_the_command_line_as_a_client(server, doc, local, tmp_path):
    """`acre ingest|ask|store ls --server URL` (or ACRE_SERVER) print what they print locally, from the server."""
    from tests.helpers import assert_clean_error, run_acre

    env = {"ACRE_API_KEY": KEY, "ACRE_SERVER": server.url}
    f = tmp_path / "doc.txt"
    f.write_text(DOC)
    p = run_acre("ingest", str(f), "--json", "--name", "colours", env_extra=env)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["doc_id"] == doc["doc_id"] and info["existed"]
    p = run_acre("ask", "colours", Q[0], "--json", "--max-new-tokens", "6", env_extra=env)
    assert p.returncode == 0, p.stderr
    _same(json.loads(p.stdout), local_answer(local, doc["doc_id"], {"question": Q[0], "max_new_tokens": 6}))
    p = run_acre("ask", doc["doc_id"][:8], Q[1], "--policy", "full", "--max-new-tokens", "6", env_extra=env)
    assert p.returncode == 0 and "[full, exact positions: KV ratio 1.000" in p.stderr, p.stderr
    assert p.stdout.strip() == local_answer(local, doc["doc_id"], {"question": Q[1], "policy": "full",
                                                                    "max_new_tokens": 6})["answer"]
    p = run_acre("ask", "colours", RESELECT["question"], "--json", "--max-new-tokens", "6", "--k-max", "1",
                 "--neighbors", "0", "--reselect-min", "1e-9", "--reselect", "2", env_extra=env)
    assert p.returncode == 0, p.stderr
    _same(json.loads(p.stdout), local_answer(local, doc["doc_id"], RESELECT))
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(json.dumps(c) for c in [*CASES[:3], RESELECT]))
    p = run_acre("ask", "colours", "--questions", str(qfile), env_extra=env)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(rows) == 4
    for case, row in zip([*CASES[:3], RESELECT], rows):
        _same(row, local_answer(local, doc["doc_id"], case))
    ls = run_acre("store", "ls", env_extra=env)
    assert ls.returncode == 0 and doc["doc_id"][:20] in ls.stdout and "colours" in ls.stdout, ls.stderr
    assert_clean_error(run_acre("ask", "colours", Q[0], env_extra={**env, "ACRE_API_KEY": "wrong"}), "401")
    assert_clean_error(run_acre("ask", "nope-such-doc", Q[0], env_extra=env), "404")
    assert_clean_error(run_acre("ask", "colours", Q[0], "--server", "http://127.0.0.1:9", env_extra=env),
                       "cannot reach")
