"""Helpers shared by tests: run the `acre` CLI as a real subprocess."""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def run_acre(*args: str, env_extra: dict | None = None, input: str | None = None, timeout: float = 300):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "acre_model.cli", *args], capture_output=True, text=True,
                          env=env, input=input, timeout=timeout)


def assert_clean_error(proc, needle: str) -> None:
    """Non-zero exit, one clear line on stderr containing `needle`, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle.lower() in lines[0].lower(), lines[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def library_floor(engine, store_dir, n_docs: int = 10, n_questions: int = 5, seed: int = 7) -> tuple[int, int, int]:
    """The real-model library floor: `n_docs` short documents (250-450 tokens, one fact of the same form in
    each) ingested into an embedded store at `store_dir`; `n_questions` questions about their facts, each
    asked over the whole library. Returns (right, found, largest active cache)."""
    from acre_store import EmbeddedStore
    from tools.tasks.library import library_questions, make_library

    docs = make_library(engine.tokenizer.encode, n_docs, seed=seed, min_tokens=250, max_tokens=450)
    with EmbeddedStore(str(store_dir)) as st:
        ids = [engine.ingest(d.text, store=st, name=d.name).doc_id for d in docs]
        right = found = most = 0
        for q in library_questions(docs, n_questions, seed=seed):
            a = engine.ask(ids, q.question, answer_prefix=q.answer_prefix, store=st, max_new_tokens=10)
            right += q.score(a.answer) == 1.0
            found += ids[q.target] in [s["doc_id"] for s in a.sources]
            most = max(most, a.n_active)
    return right, found, most
