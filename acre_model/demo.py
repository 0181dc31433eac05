"""`acre demo`: the main job. A long document with facts planted at several depths is ingested once;
several questions are asked with `acre` and with `full` on the same cached document; the answers are
printed side by side with the KV ratio and the time to first token."""
from __future__ import annotations

import json
import sys
import time


def run_demo(args) -> int:
    from .engine import Engine
    from .synth import make_multi_fact_doc

    t0 = time.perf_counter()
    eng = Engine.from_pretrained(args.model, device=args.device)
    print(f"model: {eng.path.name} on {eng.device} ({eng.dtype_name}), loaded in {time.perf_counter() - t0:.1f}s")
    doc = make_multi_fact_doc(eng.tokenizer.encode, args.tokens, facts=(0.1, 0.35, 0.6, 0.85), seed=2026)
    print(f"document: {doc.n_tokens} tokens of generated prose with {len(doc.facts)} planted facts")
    info = eng.ingest(doc.text, store=args.store, name="acre-demo", progress=sys.stderr.isatty())
    how = "already in the store (reused)" if info.existed else f"prefilled once in {info.seconds:.1f}s"
    print(f"ingested {info.doc_id[:12]}: {info.n_chunks} chunks of L2, {info.n_l1} L1 entries; {how}\n")
    rows = []
    for f in doc.facts:
        row = {"question": f.question, "expected": f.answer, "depth": f.depth}
        for pol in ("acre", "full"):
            a = eng.ask(info.doc_id, f.question, policy=pol, answer_prefix=f.answer_prefix, store=args.store,
                        max_new_tokens=16)
            row[pol] = {"answer": a.answer, "correct": f.answer.lower() in a.answer.lower(),
                        "kv_ratio": a.kv_ratio, "ttft_s": a.ttft_s}
        rows.append(row)
        print(f"Q ({f.depth:.0%} deep): {f.question}\n   expected: {f.answer}")
        for pol in ("acre", "full"):
            r = row[pol]
            mark = "ok " if r["correct"] else "MISS"
            print(f"   {pol:<5} [{mark}] {r['answer'][:60]!r:<64} KV {r['kv_ratio']:.2f}  TTFT {r['ttft_s']:.2f}s")
        print()
    summary = {p: {"correct": sum(r[p]["correct"] for r in rows),
                   "mean_kv_ratio": sum(r[p]["kv_ratio"] for r in rows) / len(rows),
                   "mean_ttft_s": sum(r[p]["ttft_s"] for r in rows) / len(rows)} for p in ("acre", "full")}
    for p, s in summary.items():
        print(f"{p:<5}: {s['correct']}/{len(rows)} correct, mean KV ratio {s['mean_kv_ratio']:.3f}, "
              f"mean TTFT {s['mean_ttft_s']:.2f}s")
    if getattr(args, "json", False):
        print(json.dumps({"doc_id": info.doc_id, "n_tokens": info.n_tokens, "rows": rows, "summary": summary}))
    return 0
