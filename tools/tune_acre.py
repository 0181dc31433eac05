"""Pick ACRE's ask defaults by measurement: accuracy and KV ratio of `acre` under a grid of
(k_min, k_max, neighbours, position mode), side by side with `full`, on generated needle documents
(evaluation namespace, not the calibration probes). Each document is ingested once.

    python tools/tune_acre.py [--quick] [--lengths 2048,4096,8000] [--n 6] [--out DIR]

Prints one row per configuration and length; ends with one JSON line.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lengths", default="2048,4096,7800")
    ap.add_argument("--n", type=int, default=6, help="documents per length")
    ap.add_argument("--grid", default="1:4:1,2:8:1,1:2:1,1:4:0,2:6:2", help="k_min:k_max:neighbours,...")
    ap.add_argument("--store", default=None, help="store directory (default: a temporary one)")
    ap.add_argument("--chunk-size", type=int, default=None, help="ingest with this chunk size")
    ap.add_argument("--n-recent", type=int, default=None, help="ingest with this recent window")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from acre_model.engine import Engine
    from acre_model.synth import make_needle_doc
    from acre_store import EmbeddedStore

    from dataclasses import replace

    from acre_model.doc_state import LayoutConfig

    eng = Engine.from_pretrained()
    layout = LayoutConfig()
    if args.chunk_size:
        layout = replace(layout, chunk_size=args.chunk_size)
    if args.n_recent is not None:
        layout = replace(layout, n_recent=args.n_recent)
    store = EmbeddedStore(args.store or tempfile.mkdtemp(prefix="acre-tune-"))
    lengths = [int(x) for x in args.lengths.split(",")]
    n_docs = 2 if args.quick else args.n
    grid = [tuple(int(v) for v in g.split(":")) for g in args.grid.split(",")]
    configs = [("full", {})] + [("acre", {"k_min": a, "k_max": b, "neighbors": c, "mode": m})
                                for (a, b, c), m in itertools.product(grid, ("focus", "exact"))]
    res: dict[tuple, list] = {}
    t0 = time.perf_counter()
    for n in lengths:
        for i in range(n_docs):
            d = make_needle_doc(eng.tokenizer.encode, n, depth=(i + 0.5) / n_docs, seed=20_000 + i)
            info = eng.ingest(d.text, store=store, layout=layout)
            for pol, prm in configs:
                a = eng.ask(info.doc_id, d.question, policy=pol, answer_prefix=d.answer_prefix, store=store,
                            max_new_tokens=12, **prm)
                key = (n, pol, json.dumps(prm, sort_keys=True))
                res.setdefault(key, []).append((d.answer in a.answer, a.kv_ratio, a.ttft_s))
            print(f"  {n} tokens doc {i + 1}/{n_docs} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    print(f"{'tokens':>6} {'policy':<5} {'params':<62} {'acc':>5} {'kv':>6} {'ttft':>6}")
    rows = []
    for (n, pol, prm), v in sorted(res.items()):
        acc = sum(x[0] for x in v) / len(v)
        kv = sum(x[1] for x in v) / len(v)
        tt = sum(x[2] for x in v) / len(v)
        rows.append({"tokens": n, "policy": pol, "params": json.loads(prm), "acc": acc, "kv_ratio": kv, "ttft_s": tt})
        print(f"{n:>6} {pol:<5} {prm:<62} {acc:>5.2f} {kv:>6.3f} {tt:>6.2f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "tune_acre.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
