"""ACRE on a hybrid (local/global) model: stored bytes per document and needle answers (issue 15, item 2).

Each needle document is prefilled once and written twice: with its global layers only (the default,
`store_layers="global"`: local layers keep the document's last window in L1 and never refill) and with
every layer (`store_layers="all"`: local layers are refilled like global ones, as on a Llama). Reports
the stored bytes of each (L2 chunks + L1 parts), and the answers of `full` and `acre` under the local-layer
treatments: `window` (global-only store, local layers attend their window), `window+sinks` (the same,
plus the document's sinks at the window's newest positions, focus mode) and `refill` (the all-layers
store: local layers attend the refilled chunks and the attend set too).

    python tools/bench_hybrid.py --model gemma-3-270m --lengths 8192 --seeds 3

The last stdout line is one JSON object with every row.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import acre_model.engine as engine_mod  # noqa: E402
from acre_model import active_layout  # noqa: E402
from acre_model.engine import Engine  # noqa: E402
from acre_model.synth import make_needle_doc  # noqa: E402
from acre_store import EmbeddedStore  # noqa: E402


def stored_bytes(store, doc_id: str) -> dict:
    meta = store.info(doc_id)
    l1 = sum(a.nbytes for a in store.get_l1(doc_id).values())
    l2 = meta.layout.kv_nbytes
    return {"l2": l2, "l1": l1, "total": l1 + l2, "stored_layers": meta.layout.n_layers}


def memo_prefill():
    """Prefill each token sequence once, however many layouts it is written under."""
    orig, memo = engine_mod.prefill_document, {}

    def prefill(model, ids, layout, progress=None):
        key = tuple(ids)
        if key not in memo:
            memo.clear()
            memo[key] = orig(model, ids, layout, progress)
        return memo[key]

    engine_mod.prefill_document = prefill


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--lengths", default="8192")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed+seeds-1")
    ap.add_argument("--depths", default="0.2,0.5,0.8", help="needle depths, one per seed in turn")
    ap.add_argument("--store", default=None, help="embedded store folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    memo_prefill()
    glob = Engine.from_pretrained(args.model, store_layers="global")
    every = Engine(glob.model, glob.tokenizer, glob.path, store_layers="all")
    store = EmbeddedStore(args.store or tempfile.mkdtemp(prefix="acre-hybrid-"))
    depths = [float(x) for x in args.depths.split(",")]
    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            doc = make_needle_doc(glob.tokenizer.encode, n, depths[seed % len(depths)], seed)
            t0 = time.perf_counter()
            g = glob.ingest(doc.text, store=store)
            t1 = time.perf_counter()
            a = every.ingest(doc.text, store=store)
            bg, ba = stored_bytes(store, g.doc_id), stored_bytes(store, a.doc_id)
            row = {"n_tokens": g.n_tokens, "seed": seed, "depth": doc.depth, "ingest_s": t1 - t0,
                   "bytes_global": bg, "bytes_all": ba, "ratio_total": bg["total"] / ba["total"],
                   "ratio_l2": bg["l2"] / ba["l2"], "answer": doc.answer, "runs": {}}
            runs = [("full", glob, g, "full", {}, False), ("acre-window", glob, g, "acre", {}, False),
                    ("acre-window+sinks", glob, g, "acre", {}, True), ("acre-refill", every, a, "acre", {}, False),
                    ("full-all", every, a, "full", {}, False)]
            default_sinks = active_layout.LOCAL_SINKS
            for name, eng, info, pol, knobs, sinks in runs:
                active_layout.LOCAL_SINKS = sinks
                t = time.perf_counter()
                ans = eng.ask(info.doc_id, doc.question, policy=pol, answer_prefix=doc.answer_prefix, store=store,
                              max_new_tokens=args.max_new_tokens, **knobs)
                row["runs"][name] = {"answer": ans.answer, "correct": doc.answer in ans.answer,
                                     "kv_ratio": ans.kv_ratio, "s": time.perf_counter() - t}
            active_layout.LOCAL_SINKS = default_sinks
            rows.append(row)
            print(f"{row['n_tokens']} tokens seed {seed}: bytes global/all {bg['total'] / 1e6:.1f}/"
                  f"{ba['total'] / 1e6:.1f} MB (ratio {row['ratio_total']:.3f}, L2 {row['ratio_l2']:.3f}); "
                  + ", ".join(f"{k}={'ok' if v['correct'] else 'no'}({v['kv_ratio']:.3f})"
                              for k, v in row["runs"].items()), flush=True)
    summary = {}
    for name in rows[0]["runs"] if rows else []:
        summary[name] = sum(r["runs"][name]["correct"] for r in rows) / len(rows)
    print(json.dumps({"rows": rows, "accuracy": summary}))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
