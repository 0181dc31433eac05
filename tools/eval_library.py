"""The library evaluation (issue 14): one question over 10, 30, 100 documents.

For each library size, builds a library (`tools/tasks/library.py`: documents of 1k-3k tokens, one fact
of the same form in each; with `--spread M` each key in M documents, each question asking for all its
values), ingests it into a fresh embedded store, then asks questions about the facts of
documents drawn at random, each over the whole library (`Engine.ask(list_of_ids, ...)`). Reports per
size: the share answered right, how often the fact's document was among the answer's sources, the active
cache (entries, largest over the questions) against the model's context, and time to first token (the
first question, which loads every document's L1, and the median of the others).

    python -m tools.eval_library --sizes 10,30 --questions 10 --out runs/library
    python -m tools.eval_library --model gemma-3-270m --sizes 10,30 --questions 10 --out runs/library-gemma
    python -m tools.eval_library --sizes 10,30 --questions 10 --reselect 8 --out runs/library-reselect8
    python -m tools.eval_library --sizes 10,30 --questions 10 --spread 3 --reselect 8 --out runs/library-spread3
    python -m tools.eval_library --sizes 12 --questions 4 --spread 3 --doc-tokens 250,450 --out runs/short

Ends with one JSON line of the headline figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def run_size(eng, n_docs: int, n_questions: int, seed: int, policy: str, log, store_dir: str | None = None,
             knobs: dict | None = None, reselect: int = 0, spread: int = 1, doc_tokens: tuple[int, int] = (1000, 3000)
             ) -> dict:
    from acre_store import EmbeddedStore

    from tools.tasks.library import library_questions, make_library, make_spread_library, spread_questions

    if spread > 1:
        docs = make_spread_library(eng.tokenizer.encode, n_docs, spread, seed, *doc_tokens)
        questions = spread_questions(docs, n_questions, seed=seed)
    else:
        docs = make_library(eng.tokenizer.encode, n_docs, seed, *doc_tokens)
        questions = library_questions(docs, n_questions, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        st = EmbeddedStore(store_dir or tmp)
        t0 = time.perf_counter()
        ids = [eng.ingest(d.text, store=st, name=d.name).doc_id for d in docs]
        ingest_s = time.perf_counter() - t0
        eng.reset_caches()
        eng.max_open_docs = max(eng.max_open_docs, n_docs)
        rows = []
        for q in questions:
            a = eng.ask(ids, q.question, policy=policy, answer_prefix=q.answer_prefix, store=st,
                        max_new_tokens=q.max_new_tokens, reselect=reselect, **(knobs or {}))
            used = [ids.index(s["doc_id"]) for s in a.sources]
            rows.append({"target": q.target, "answer": q.answer, "prediction": a.answer, "score": q.score(a.answer),
                         "found": sum(t in used for t in q.targets) / len(q.targets), "sources": used,
                         "targets": q.targets, "answers": q.answers, "n_active": a.n_active,
                         "kv_ratio": a.kv_ratio, "ttft_s": a.ttft_s, "k": a.k,
                         "reselected": [[ids.index(d), c] for d, c in a.reselected_chunks]})
            joined = f"  joined {rows[-1]['reselected']}" if a.reselected_chunks else ""
            log(f"  {n_docs:4d} docs  docs {q.targets}  {' '.join(q.answers)} -> {a.answer!r:20s} used {used}  "
                f"active {a.n_active}  TTFT {a.ttft_s:.2f}s{joined}")
        st.close()
    warm = [r["ttft_s"] for r in rows[1:]] or [rows[0]["ttft_s"]]
    return {"model": eng.path.name, "n_docs": n_docs, "n_tokens": sum(d.n_tokens for d in docs),
            "n_questions": len(rows),
            "score": sum(r["score"] for r in rows) / len(rows), "found": sum(r["found"] for r in rows) / len(rows),
            "max_active": max(r["n_active"] for r in rows), "max_context": eng.max_context,
            "mean_kv_ratio": sum(r["kv_ratio"] for r in rows) / len(rows),
            "ttft_first_s": rows[0]["ttft_s"], "ttft_median_s": statistics.median(warm), "ingest_s": ingest_s,
            "spread": spread, "reselect": reselect,
            "mean_reselected": sum(len(r["reselected"]) for r in rows) / len(rows), "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,30,100", help="library sizes (documents), comma-separated")
    ap.add_argument("--questions", type=int, default=10, help="questions per library size")
    ap.add_argument("--policy", default="acre")
    ap.add_argument("--model", default=None,
                    help="a bundled model's name (e.g. gemma-3-270m) or a model folder (default: the default model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="one library of 10 documents, 3 questions")
    ap.add_argument("--out", default=None, help="folder for library.json")
    ap.add_argument("--store-dir", default=None,
                    help="keep the ingested libraries in this embedded store (a rerun skips ingestion)")
    ap.add_argument("--knobs", default="{}", help="policy knobs as JSON, e.g. '{\"k_max\": 2}'")
    ap.add_argument("--spread", type=int, default=1, metavar="M",
                    help="documents per key (tools/tasks/library.py's spread library): each question asks for "
                         "the values of M documents (1: one fact per question)")
    ap.add_argument("--doc-tokens", default="1000,3000", metavar="MIN,MAX", help="each document's length range")
    ap.add_argument("--reselect", type=int, default=0, metavar="N",
                    help="re-selection during decoding every N answer tokens (Engine.ask(reselect=N); 0: off)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [10] if args.quick else [int(x) for x in args.sizes.split(",") if x]
    try:
        doc_tokens = tuple(int(x) for x in args.doc_tokens.split(","))
        assert len(doc_tokens) == 2 and 0 < doc_tokens[0] <= doc_tokens[1]
    except (ValueError, AssertionError):
        raise SystemExit(f"--doc-tokens must be MIN,MAX with 0 < MIN <= MAX, got {args.doc_tokens!r}") from None
    n_q = 3 if args.quick else args.questions

    from acre_model.engine import Engine

    eng = Engine.from_pretrained(args.model)

    def log(m):
        print(m, file=sys.stderr, flush=True)

    results = []
    for n in sizes:
        r = run_size(eng, n, n_q, args.seed, args.policy, log, args.store_dir, json.loads(args.knobs), args.reselect,
                     args.spread, doc_tokens)
        results.append(r)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "library.json").write_text(json.dumps(results, indent=2))
    print(f"{'docs':>5} {'tokens':>7} {'right':>6} {'found':>6} {'max active':>10} {'kv ratio':>8} "
          f"{'TTFT first':>10} {'TTFT median':>11}")
    for r in results:
        print(f"{r['n_docs']:5d} {r['n_tokens']:7d} {r['score']:6.2f} {r['found']:6.2f} "
              f"{r['max_active']:10d} {r['mean_kv_ratio']:8.4f} {r['ttft_first_s']:9.2f}s {r['ttft_median_s']:10.2f}s")
    print(json.dumps({"model": eng.path.name, "policy": args.policy, "reselect": args.reselect, "spread": args.spread,
                      "sizes": [{k: v for k, v in r.items() if k != "rows"} for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
