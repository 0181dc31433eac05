"""The engine against a real daemon: worker processes sharing it, a restart between ingest and ask,
and the CLI's errors (one line, non-zero exit, nothing half-written)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import assert_clean_error, run_acre
from tests.model.tiny import DOC, make_tiny_folder
from tests.store.support import Daemon, short_tmp

QUESTIONS = ["What colour is the sky?", "What colour is the grass?", "Which sentence mentions the sea?"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_path):
    return make_tiny_folder(tmp_path_factory.mktemp("svc") / "model", default_model_path, seed=21)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(data=str(tmp_path / "data"), backend="lmdb", sock_dir=short_tmp()).start()
    yield d
    d.stop()


def _ingest(folder, addr, doc_path):
    p = run_acre("ingest", str(doc_path), "--store", addr, "--model", str(folder), "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _ask_proc(folder, addr, doc_id, q):
    return subprocess.Popen([sys.executable, "-m", "acre_model.cli", "ask", doc_id, q, "--store", addr,
                             "--model", str(folder), "--json", "--max-new-tokens", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_workers_share_one_daemon_and_agree(tiny_folder, daemon, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    info = _ingest(tiny_folder, daemon.addr, doc)
    alone = {}
    for q in QUESTIONS:
        p = run_acre("ask", info["doc_id"], q, "--store", daemon.addr, "--model", str(tiny_folder), "--json",
                     "--max-new-tokens", "6")
        assert p.returncode == 0, p.stderr
        alone[q] = json.loads(p.stdout)
    # two worker processes, same questions, same time
    procs = [(q, _ask_proc(tiny_folder, daemon.addr, info["doc_id"], q)) for q in QUESTIONS for _ in range(2)]
    for q, pr in procs:
        out, err = pr.communicate(timeout=300)
        assert pr.returncode == 0, err
        got = json.loads(out)
        assert got["answer"] == alone[q]["answer"]
        assert got["refilled_chunks"] == alone[q]["refilled_chunks"]


def test_daemon_restart_between_ingest_and_ask_loses_nothing(tiny_folder, daemon, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    info = _ingest(tiny_folder, daemon.addr, doc)
    before = run_acre("ask", info["doc_id"], QUESTIONS[0], "--store", daemon.addr, "--model", str(tiny_folder),
                      "--json", "--policy", "full", "--max-new-tokens", "6")
    daemon.restart()
    after = run_acre("ask", info["doc_id"][:10], QUESTIONS[0], "--store", daemon.addr, "--model",
                     str(tiny_folder), "--json", "--policy", "full", "--max-new-tokens", "6")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["answer"] == json.loads(before.stdout)["answer"]
    again = _ingest(tiny_folder, daemon.addr, doc)
    assert again["doc_id"] == info["doc_id"] and again["existed"]


def test_unknown_document(tiny_folder, daemon):
    assert_clean_error(run_acre("ask", "ab" * 20, "q?", "--store", daemon.addr, "--model", str(tiny_folder)),
                       "unknown document")


def test_unreachable_daemon(tiny_folder, tmp_path):
    addr = f"unix://{short_tmp()}/nobody.sock"
    p = run_acre("ask", "ab" * 20, "q?", "--store", addr, "--model", str(tiny_folder),
                 env_extra={"ACRE_STORE_TIMEOUT": "2"})
    assert_clean_error(p, "nobody.sock")


def test_empty_document_writes_nothing(tiny_folder, daemon, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    assert_clean_error(run_acre("ingest", str(empty), "--store", daemon.addr, "--model", str(tiny_folder)),
                       "empty document")
    c = daemon.client()
    assert c.list() == []
    c.close()


def test_over_long_document_writes_nothing(tiny_folder, daemon, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("word " * 3000)  # the tiny model's context is 2048
    assert_clean_error(run_acre("ingest", str(long), "--store", daemon.addr, "--model", str(tiny_folder)),
                       "at most")
    c = daemon.client()
    assert c.list() == []
    c.close()


def test_bad_files(tiny_folder, tmp_path):
    assert_clean_error(run_acre("ingest", str(tmp_path / "missing.txt"), "--model", str(tiny_folder)),
                       "no such file")
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    assert_clean_error(run_acre("ingest", str(binary), "--model", str(tiny_folder)), "not UTF-8")


def test_model_without_calibration(tiny_folder, tmp_path, acre_home):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_folder, bare)
    (bare / "retrieval_heads.json").unlink()
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    assert_clean_error(run_acre("ingest", str(doc), "--model", str(bare)), "acre model calibrate")


def test_ingest_from_stdin_into_embedded_store(tiny_folder, acre_home):
    p = run_acre("ingest", "-", "--model", str(tiny_folder), "--json", input=DOC)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["n_tokens"] > 100 and not info["existed"]
    ls = run_acre("store", "ls", "--json")
    assert info["doc_id"] in ls.stdout


def test_unknown_policy(tiny_folder, acre_home):
    p = run_acre("ingest", "-", "--model", str(tiny_folder), "--json", input=DOC)
    doc_id = json.loads(p.stdout)["doc_id"]
    assert_clean_error(run_acre("ask", doc_id, "q?", "--policy", "magic", "--model", str(tiny_folder)),
                       "unknown policy")


def test_calibrate_writes_heads_beside_the_model(tiny_folder, tmp_path):
    import shutil

    folder = tmp_path / "uncalibrated"
    shutil.copytree(tiny_folder, folder)
    (folder / "retrieval_heads.json").unlink()
    p = run_acre("model", "calibrate", str(folder), "--n-probes", "2", "--lengths", "300", "--n-heads", "2",
                 "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    saved = json.loads((folder / "retrieval_heads.json").read_text())
    assert saved["heads"] == res["heads"] and len(saved["heads"]) == 2
    assert all(0 <= l < 3 and 0 <= g < 2 for l, g in saved["heads"])  # tiny: 3 layers, 2 KV heads
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    ok = run_acre("ingest", str(doc), "--model", str(folder), "--json",
                  env_extra={"ACRE_HOME": str(tmp_path / "home")})
    assert ok.returncode == 0, ok.stderr


def test_many_questions_from_a_jsonl_file_through_acre_store_env(tiny_folder, daemon, tmp_path):
    """`acre ask DOC --questions FILE` answers every line together (batched) as `acre ask` does each;
    the daemon is named by ACRE_STORE instead of --store."""
    env = {"ACRE_STORE": daemon.addr}
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    p = run_acre("ingest", str(doc), "--model", str(tiny_folder), "--json", "--name", "colours", env_extra=env)
    assert p.returncode == 0, p.stderr
    lines = [{"id": "a", "question": QUESTIONS[0]}, {"question": QUESTIONS[1], "policy": "full"},
             {"question": QUESTIONS[2], "knobs": {"k_max": 4}, "max_new_tokens": 4}]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "answers.jsonl"
    p = run_acre("ask", "colours", "--questions", str(qfile), "--out", str(out), "--model", str(tiny_folder),
                 "--max-new-tokens", "6", env_extra=env)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == QUESTIONS and rows[0]["id"] == "a"
    singles = [("--policy", "acre", "--max-new-tokens", "6"), ("--policy", "full", "--max-new-tokens", "6"),
               ("--k-max", "4", "--max-new-tokens", "4")]
    for q, extra, row in zip(QUESTIONS, singles, rows):
        one = run_acre("ask", "colours", q, "--model", str(tiny_folder), "--json", *extra, env_extra=env)
        assert one.returncode == 0, one.stderr
        alone = json.loads(one.stdout)
        assert (row["answer"], row["refilled_chunks"], row["policy"]) == (alone["answer"], alone["refilled_chunks"],
                                                                          alone["policy"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?"}\n{"question": 3}\n')
    assert_clean_error(run_acre("ask", "colours", "--questions", str(bad), "--model", str(tiny_folder),
                                env_extra=env), "bad.jsonl:2")
    assert_clean_error(run_acre("ask", "colours", "--model", str(tiny_folder), env_extra=env), "--questions")
