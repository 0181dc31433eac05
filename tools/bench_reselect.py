"""What re-selection during decoding costs a serving worker: the same questions through the batching
scheduler (`Scheduler`, what `acre serve` and `acre ask --questions` run), with `reselect` off and on, side
by side in one run, repeated.

Each round ingests nothing new: D multi-value documents (probe seed 7, kept apart from the evaluation) are
ingested once into a temporary store; then every round submits the documents' questions B times each, all
at once, first with `reselect=0`, then with `reselect=N`, and times each batch from the first submit to
the last answer. Reports per setting: wall time, answer tokens/s, mean answer tokens, chunks re-selection
joined, and the on/off ratios (wall time and tokens/s) per round; the answers' scores (the task's metric)
show what the time buys.

    python tools/bench_reselect.py [--docs 2] [--copies 4] [--length 4096] [--reselect 8] [--rounds 2] [--out DIR]
    python tools/bench_reselect.py --quick     # one 2k document asked 4 times, 32 tokens: about a minute

Ends with one JSON line holding the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_batch(sched, requests) -> tuple[float, list]:
    """Submit every request at once; (seconds to the last answer, answers in order)."""
    t0 = time.perf_counter()
    streams = [sched.submit(r) for r in requests]
    answers = [s.result(timeout=3600) for s in streams]
    return time.perf_counter() - t0, answers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2, help="multi-value documents (probe seed 7)")
    ap.add_argument("--copies", type=int, default=4, help="times each document's question is asked per batch")
    ap.add_argument("--length", type=int, default=4096, help="document tokens")
    ap.add_argument("--reselect", type=int, default=8, help="re-selection every N answer tokens when on")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs, for a range")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--model", default=None, help="a prepared model (default: the default model)")
    ap.add_argument("--quick", action="store_true", help="one 2k document, 4 copies, 32 new tokens")
    ap.add_argument("--out", default=None, help="a folder for results.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.docs, args.copies, args.length, args.max_new_tokens = 1, 4, 2048, 32
    for name in ("docs", "copies", "reselect", "rounds", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")

    import torch

    from acre_model.engine import Engine
    from acre_model.scheduler import AskRequest, Scheduler
    from acre_store import EmbeddedStore
    from tools.tasks import build_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    eng = Engine.from_pretrained(args.model)
    tasks = build_suite(eng.tokenizer.encode, [args.length], (0.5,), args.docs, seed=7,
                        families=["niah_multivalue"])
    with tempfile.TemporaryDirectory(prefix="acre-bench-reselect-") as tmp:
        store = EmbeddedStore(str(Path(tmp) / "store"))
        docs = []
        for i, t in enumerate(tasks, 1):
            t0 = time.perf_counter()
            info = eng.ingest(t.doc_text, store=store, name=t.task_id)
            print(f"ingested {t.task_id} ({info.n_tokens} tokens) in {time.perf_counter() - t0:.1f}s [{i}/{len(tasks)}]",
                  file=sys.stderr)
            docs.append((t, info.doc_id))

        asked = [d for d in docs for _ in range(args.copies)]  # every document's question, `copies` times

        def requests(n: int) -> list:
            return [AskRequest(doc_id, t.question, answer_prefix=t.answer_prefix, max_new_tokens=args.max_new_tokens,
                               store=store, reselect=n) for t, doc_id in asked]

        sched = Scheduler(eng, max_batch=len(asked))
        rounds = []
        try:
            run_batch(sched, requests(0)[:1])  # warm-up: device chunk cache, first forwards
            for r in range(args.rounds):
                row = {}
                for n in (0, args.reselect):
                    wall, answers = run_batch(sched, requests(n))
                    toks = sum(a.n_new_tokens for a in answers)
                    score = statistics.mean(t.score(a.answer) for (t, _), a in zip(asked, answers))
                    row["on" if n else "off"] = {
                        "wall_s": round(wall, 2), "tokens_per_s": round(toks / wall, 1),
                        "mean_new_tokens": round(toks / len(answers), 1),
                        "chunks_joined": round(statistics.mean(len(a.reselected_chunks) for a in answers), 2),
                        "kv_ratio": round(statistics.mean(a.kv_ratio for a in answers), 4),
                        "score": round(100 * score, 1)}
                row["wall_ratio"] = round(row["on"]["wall_s"] / row["off"]["wall_s"], 3)
                row["tokens_per_s_ratio"] = round(row["on"]["tokens_per_s"] / row["off"]["tokens_per_s"], 3)
                rounds.append(row)
                print(f"round {r + 1}: off {row['off']}\n         on  {row['on']}\n"
                      f"         wall on/off {row['wall_ratio']}x, tokens/s on/off {row['tokens_per_s_ratio']}x",
                      flush=True)
        finally:
            sched.close()
            store.close()
    out = {"batch": len(asked), "length": args.length, "reselect": args.reselect,
           "max_new_tokens": args.max_new_tokens, "wall_ratio": [r["wall_ratio"] for r in rounds],
           "tokens_per_s_ratio": [r["tokens_per_s_ratio"] for r in rounds], "rounds": rounds}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
