"""Measure how well each locator finds the needle's chunk, without the store (prefill once per document,
then vary the layout and the locator on the same KV).

    python tools/locator_study.py [--quick] [--lengths 2048,4096] [--n 8] [--index-heads 4,6] [--out DIR]

Prints a table of needle-chunk recall@k per (length, chunk size, locator) and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


def rank_of(p: torch.Tensor, targets: list[int]) -> int:
    best = max(float(p[c]) for c in targets)
    return int((p > best).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--n", type=int, default=8, help="documents per length")
    ap.add_argument("--chunk-sizes", default="32,64")
    ap.add_argument("--index-heads", default=None,
                    help="compare locator indexes of the N best calibrated heads, e.g. 4,6 (default: the shipped set)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from acre_model.doc_state import DocState, LayoutConfig
    from acre_model.engine import Engine
    from acre_model.ingest import build_l1_parts, prefill_document
    from acre_model.policies import AcreL1Policy, AcrePolicy, PlanContext
    from acre_model.synth import make_needle_doc

    eng = Engine.from_pretrained()
    heads = eng.retrieval_heads()
    head_sets = {"index": heads}
    if args.index_heads:
        from acre_model.calibrate import calibration_record
        top = [(h["layer"], h["kv_head"]) for h in calibration_record(eng.path, eng.fingerprint)["top_heads"]]
        head_sets = {f"index-{n}": top[:n] for n in (int(x) for x in args.index_heads.split(","))}
    # `index-N` scores with every head of its index; the default row is what `acre` ships (its best 4 heads)
    index_policy = AcrePolicy(locator_heads=0) if args.index_heads else AcrePolicy()
    lengths = [int(x) for x in args.lengths.split(",")]
    n_docs = 3 if args.quick else args.n
    sizes = [int(x) for x in args.chunk_sizes.split(",")]
    ranks: dict[tuple, list[int]] = {}
    t0 = time.perf_counter()
    for n in lengths:
        for i in range(n_docs):
            d = make_needle_doc(eng.tokenizer.encode, n, depth=(i + 0.5) / n_docs, seed=10_000 + i)
            ids = eng.tokenizer.document_ids(d.text)
            span = eng.tokenizer.document_token_span(d.text, d.needle_char_span)
            pf = prefill_document(eng.model, ids, LayoutConfig())
            q = torch.tensor(eng.tokenizer.question_ids(d.question, d.answer_prefix))
            for C in sizes:
                for rep_mode in ("attention", "uniform"):
                    lay = replace(LayoutConfig(), chunk_size=C, rep_mode=rep_mode)
                    for name, hs in head_sets.items():
                        parts = build_l1_parts(pf, lay, hs)
                        ds = DocState.from_parts("x", {"index_heads": hs, "layout": {}}, parts, len(ids), C,
                                                 eng.model.dtype, eng.device)
                        ctx = PlanContext(eng.model, ds, q)
                        targets = ds.chunks_of(span)
                        if rep_mode == "attention":
                            ranks.setdefault((n, C, name), []).append(rank_of(index_policy.locate(ctx), targets))
                        if name == next(iter(head_sets)):
                            ranks.setdefault((n, C, f"l1-{rep_mode}"), []).append(
                                rank_of(AcreL1Policy().locate(ctx), targets))
            print(f"  {n} tokens doc {i + 1}/{n_docs} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    print(f"{'tokens':>6} {'C':>4} {'locator':<14} {'top1':>5} {'top2':>5} {'top4':>5} {'top8':>5}  ranks")
    summary = {}
    for (n, C, name), r in sorted(ranks.items()):
        rt = torch.tensor(r)
        rec = {k: float((rt < k).float().mean()) for k in (1, 2, 4, 8)}
        summary[f"{n}/{C}/{name}"] = rec
        print(f"{n:>6} {C:>4} {name:<14} {rec[1]:>5.2f} {rec[2]:>5.2f} {rec[4]:>5.2f} {rec[8]:>5.2f}  {r}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "locator_study.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({"recall_at_4": {k: v[4] for k, v in summary.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
