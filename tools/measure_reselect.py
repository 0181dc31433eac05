"""Re-selection during decoding, measured on probe seeds: each task asked with a policy as it is and with
`reselect=N` (`Engine.ask`), on the same ingested document. Probe seeds (default 7) are kept apart from
the evaluation's (0), as in `tools/tune_volume.py`.

    python tools/measure_reselect.py --families niah_multivalue --depths 0.2,0.4,0.6,0.8 --reselect 8
    python tools/measure_reselect.py --model gemma-3-270m --families niah_multivalue --lengths 8192 --depths 0.3,0.7

Prints one line per task and a summary per family; ends with one JSON line. Per task it also reports the
residual locator's view right after the first plan (the question's rows only, every attended token left
out of the softmax; what `ChunkPolicy.locate_more` thresholds with `reselect_min`): its best share and
whether that chunk holds a needle the plan missed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def residual_view(eng, task, doc_id, store, policy) -> dict:
    """The residual locator's best chunk and share for the question alone, with the first plan's chunks
    (and sinks, recent window) left out of the softmax; `missed_needle`: it holds a needle the plan lacks."""
    import torch

    from acre_model import locator
    from acre_model.policies import make_policy
    from acre_model.policies.base import PlanContext
    from tools.eval import needle_chunks

    pol = make_policy(policy)
    doc = eng.load_document(doc_id, store)
    ctx = PlanContext(eng.model, doc, torch.tensor(eng.tokenizer.question_ids(task.question, task.answer_prefix)))
    plan = pol.plan(ctx)
    probe, n_heads = pol.index_probe(ctx)  # the plan's own pass 1
    cfg = eng.model.cfg
    s = locator.index_chunk_scores(doc, probe, cfg.n_rep, cfg.head_dim, n_heads,
                                   exclude=locator.chunk_tokens(doc, plan.chunks))
    c = int(s.argmax())
    need = needle_chunks(eng.tokenizer, task, doc) if task.needle_spans else set()
    return {"share": float(s[c]), "chunk": c, "missed_needle": c in need and c not in plan.chunks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a bundled model's name or a model folder (default: the default model)")
    ap.add_argument("--families", default="niah_multivalue")
    ap.add_argument("--lengths", default="2048")
    ap.add_argument("--depths", default="0.2,0.4,0.6,0.8", help="one task per depth (depth-free: as many)")
    ap.add_argument("--seed", type=int, default=7, help="probe seed (the evaluation uses 0)")
    ap.add_argument("--policy", default="acre")
    ap.add_argument("--reselect", type=int, default=8)
    ap.add_argument("--store", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the rows here (JSONL)")
    args = ap.parse_args(argv)
    if args.seed == 0:
        raise SystemExit("seed 0 is the evaluation's: measure on other seeds")
    import torch

    from acre_model.engine import Engine
    from acre_store import EmbeddedStore
    from tools.tasks import build_suite

    torch.set_num_threads(args.threads)
    eng = Engine.from_pretrained(args.model)
    depths = tuple(float(d) for d in args.depths.split(","))
    tasks = build_suite(eng.tokenizer.encode, [int(x) for x in args.lengths.split(",")], depths, 1,
                        seed=args.seed, families=args.families.split(","), n_per_length=len(depths))
    store = EmbeddedStore(args.store or tempfile.mkdtemp(prefix="acre-reselect-"))
    rows = []
    t0 = time.perf_counter()
    for task in tasks:
        info = eng.ingest(task.doc_text, store=store, name=task.task_id)
        row = {"task_id": task.task_id, "family": task.family}
        row["residual"] = residual_view(eng, task, info.doc_id, store, args.policy)
        for label, n in (("off", 0), ("on", args.reselect)):
            a = eng.ask(info.doc_id, task.question, args.policy, task.answer_prefix, store,
                        task.max_new_tokens, reselect=n)
            row[label] = {"score": task.score(a.answer), "answer": a.answer, "kv_ratio": a.kv_ratio,
                          "n_refilled": len(a.refilled_chunks), "n_reselected": len(a.reselected_chunks),
                          "refilled_chunks": list(a.refilled_chunks),
                          "total_s": a.total_s, "n_new_tokens": a.n_new_tokens}
        rows.append(row)
        store.delete(info.doc_id)
        off, on = row["off"], row["on"]
        res = row["residual"]
        print(f"{task.task_id}: residual best {res['share']:.3f} (chunk {res['chunk']}, "
              f"{'a missed needle' if res['missed_needle'] else 'no needle missed there'}), "
              f"score {off['score']:.2f} -> {on['score']:.2f}, chunks {off['n_refilled']} -> "
              f"{on['n_refilled']}, KV {off['kv_ratio']:.3f} -> {on['kv_ratio']:.3f}, "
              f"time {off['total_s']:.1f}s -> {on['total_s']:.1f}s ({time.perf_counter() - t0:.0f}s)",
              file=sys.stderr)
    summary = {}
    for fam in sorted({r["family"] for r in rows}):
        rs = [r for r in rows if r["family"] == fam]
        summary[fam] = {f"{k}_{label}": sum(r[label][f] for r in rs) / len(rs) * (100 if f == "score" else 1)
                        for label in ("off", "on") for k, f in (("score", "score"), ("kv", "kv_ratio"),
                                                                 ("chunks", "n_refilled"), ("s", "total_s"))}
        summary[fam]["n"] = len(rs)
        for key, missed in (("residual_missed_needle", True), ("residual_otherwise", False)):
            shares = [r["residual"]["share"] for r in rs if r["residual"]["missed_needle"] is missed]
            summary[fam][key] = [round(min(shares), 3), round(max(shares), 3), len(shares)] if shares else None
        s = summary[fam]
        print(f"{fam} (n={len(rs)}): score {s['score_off']:.1f} -> {s['score_on']:.1f}, KV {100 * s['kv_off']:.1f}% -> "
              f"{100 * s['kv_on']:.1f}%, chunks {s['chunks_off']:.1f} -> {s['chunks_on']:.1f}, "
              f"time/answer {s['s_off']:.1f}s -> {s['s_on']:.1f}s; residual best share where it is a missed "
              f"needle {s['residual_missed_needle']}, otherwise {s['residual_otherwise']} ([min, max, n])")
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps({"policy": args.policy, "reselect": args.reselect, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
