"""Benchmark asking on a cached document, side by side in one run, for documents of 2k, 4k and 8k tokens:

- time to first token (TTFT) of `acre` on the cached document vs re-prefilling document + question from
  scratch (what users do without a KV store) vs `full` on the cached document;
- decode ms/token of `acre` vs `full` (the same decode steps over each one's active cache), one question
  at a time and (`--batch`) with B questions decoding together, as a serving worker's continuous batching
  runs them (`LlamaModel.decode_batch`: the weights read once per step for all B rows, attention per
  question over its own active cache);
- resident KV bytes of the active cache; refill fetch time and the share of it hidden behind compute
  (cold device chunk cache, embedded store or `--store ADDR`);
- needle-chunk recall per locator (`acre` = index, `acre-l1` = the seed's locator).

    python tools/bench_ask.py [--quick] [--lengths 2048,4096,8000] [--n 2] [--store ADDR] [--out DIR]
    python tools/bench_ask.py --model gemma-3-270m --lengths 32000 --n 1 --facts 8   # one 32k document, 8 facts
    python tools/bench_ask.py --model gemma-3-270m --lengths 32000 --n 1 --facts 8 --batch 1,16,32,48,64 --store DIR
    # (64 rows of `full` at 32k hold 13.6 GB of active caches; a --store directory keeps the document for a rerun)

Ends with one JSON line holding the headline ratios at the longest length.
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


def per_step_ms(step, steps: int) -> float:
    """ms per call of `step()` over `steps` calls, after one warm-up call."""
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - t0) / steps


def decode_ms(model, cache, steps: int) -> float:
    tok = torch.tensor([13])
    cache.reserve(steps + 1)
    return per_step_ms(lambda: model(tok, cache), steps)


def decode_batch_ms(model, caches, steps: int) -> float:
    """ms per step of `decode_batch` over `caches` (one question each)."""
    for c in caches:
        c.reserve(steps + 1)
    return per_step_ms(lambda: model.decode_batch([13] * len(caches), caches), steps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2k and 8k, one document each, fewer decode steps")
    ap.add_argument("--lengths", default="2048,4096,7800")
    ap.add_argument("--n", type=int, default=2, help="documents per length")
    ap.add_argument("--store", default=None,
                    help="daemon address (unix:///path or host:port), or a directory for an embedded store "
                         "(default: an embedded store in a temp dir)")
    ap.add_argument("--model", default=None, help="a prepared model (default: the default model)")
    ap.add_argument("--facts", type=int, default=0, metavar="N",
                    help="documents with N planted facts at evenly spaced depths instead of one needle: the "
                         "timings use the first fact's question, recall and answers cover all N")
    ap.add_argument("--batch", default="", metavar="B1,B2,...",
                    help="also time decoding B questions together (each over its own active cache; the "
                         "document's questions in turn) for `acre` and `full`")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    batches = [int(x) for x in args.batch.split(",") if x.strip()]
    if any(b < 1 for b in batches):
        ap.error(f"--batch takes positive batch sizes, got {args.batch!r}")
    from acre_model.engine import Engine
    from acre_model.synth import make_multi_fact_doc, make_needle_doc
    from acre_store import EmbeddedStore

    eng = Engine.from_pretrained(args.model)
    if args.store and "://" not in args.store and ":" not in args.store:
        store = EmbeddedStore(args.store)
    else:
        store = args.store or EmbeddedStore(tempfile.mkdtemp(prefix="acre-bench-ask-"))
    lengths = [2048, 7800] if args.quick else [int(x) for x in args.lengths.split(",")]
    n_docs = 1 if args.quick else args.n
    steps = 16 if args.quick else 32
    rows = []
    for n in lengths:
        acc = {k: [] for k in ("ttft_acre", "ttft_acre_cold", "ttft_full", "ttft_reprefill", "dec_acre", "dec_full",
                               "kv_ratio", "kv_bytes_acre", "kv_bytes_full", "fetch_s", "hidden", "rec_index",
                               "rec_l1", "ok_acre", "ok_full", "index_share",
                               *(f"dec{b}_{p}" for b in batches for p in ("acre", "full")))}
        for i in range(n_docs):
            if args.facts:
                md = make_multi_fact_doc(eng.tokenizer.encode, n, facts=[(j + 0.5) / args.facts for j in range(args.facts)],
                                         seed=30_000 + i)
                text = md.text
                probes = [(f.question, f.answer_prefix, f.answer, f.char_span) for f in md.facts]
            else:
                nd = make_needle_doc(eng.tokenizer.encode, n, depth=(i + 0.5) / n_docs, seed=30_000 + i)
                text = nd.text
                probes = [(nd.question, nd.answer_prefix, nd.answer, nd.needle_char_span)]
            t_ingest = time.perf_counter()
            info = eng.ingest(text, store=store)
            print(f"  {n} tokens, doc {i + 1}/{n_docs} ingested in {time.perf_counter() - t_ingest:.1f}s", file=sys.stderr)
            eng.reset_caches()  # cold L1 and device chunk cache
            doc_state = eng.load_document(info.doc_id, store)
            needs = [set(doc_state.chunks_of(eng.tokenizer.document_token_span(text, sp))) for *_, sp in probes]
            eng.reset_caches()
            question, prefix0 = probes[0][0], probes[0][1]  # the timings use the first question
            cold = eng.ask(info.doc_id, question, answer_prefix=prefix0, store=store, max_new_tokens=10)
            warm = eng.ask(info.doc_id, question, answer_prefix=prefix0, store=store, max_new_tokens=10)
            full = eng.ask(info.doc_id, question, policy="full", answer_prefix=prefix0, store=store,
                           max_new_tokens=10)
            seed = eng.ask(info.doc_id, question, policy="acre-l1", answer_prefix=prefix0, store=store,
                           max_new_tokens=1)
            # re-prefill from scratch: document + question in one prefill, as without a KV store
            parts = eng.tokenizer.prompt_ids(text, question, prefix0)
            ids = torch.tensor(parts.prefix + parts.suffix)
            t0 = time.perf_counter()
            eng.model.prefill(ids, eng.model.new_cache(capacity=len(ids) + steps + 2))
            acc["ttft_reprefill"].append(time.perf_counter() - t0)
            rf_a = eng.prepare(info.doc_id, question, "acre", prefix0, store, steps + 2)
            rf_f = eng.prepare(info.doc_id, question, "full", prefix0, store, steps + 2)
            acc["kv_bytes_acre"].append(rf_a.cache.nbytes())
            acc["kv_bytes_full"].append(rf_f.cache.nbytes())
            acc["dec_acre"].append(decode_ms(eng.model, rf_a.cache, steps))
            acc["dec_full"].append(decode_ms(eng.model, rf_f.cache, steps))
            del rf_a, rf_f
            for b in batches:  # B questions decoding together, each over its own active cache
                for policy in ("acre", "full"):
                    qs = [probes[j % len(probes)][:2] for j in range(b)]  # (question, answer prefix)
                    caches = [eng.prepare(info.doc_id, q, policy, prefix, store, steps + 2).cache for q, prefix in qs]
                    acc[f"dec{b}_{policy}"].append(decode_batch_ms(eng.model, caches, steps))
                    del caches
                print(f"  {n} tokens, batch {b}: decode step acre {acc[f'dec{b}_acre'][-1]:.1f} ms, "
                      f"full {acc[f'dec{b}_full'][-1]:.1f} ms", file=sys.stderr)
            acc["ttft_acre_cold"].append(cold.ttft_s)
            acc["ttft_acre"].append(warm.ttft_s)
            acc["ttft_full"].append(full.ttft_s)
            acc["kv_ratio"].append(warm.kv_ratio)
            acc["fetch_s"].append(cold.fetch_s)
            acc["hidden"].append(1 - cold.fetch_wait_s / cold.fetch_s if cold.fetch_s > 0 else 1.0)
            acc["index_share"].append(warm.index_share)
            asked = {("acre", 0): warm, ("full", 0): full, ("acre-l1", 0): seed}  # the first question's

            def answer(j: int, policy: str, n_new: int):
                q, prefix = probes[j][:2]
                return asked.get((policy, j)) or eng.ask(info.doc_id, q, policy=policy, answer_prefix=prefix,
                                                         store=store, max_new_tokens=n_new)

            for j, ((_, _, ans, _), need) in enumerate(zip(probes, needs)):
                a, f, sd = answer(j, "acre", 10), answer(j, "full", 10), answer(j, "acre-l1", 1)
                acc["rec_index"].append(bool(need & set(a.refilled_chunks)))
                acc["rec_l1"].append(bool(need & set(sd.refilled_chunks)))
                acc["ok_acre"].append(ans in a.answer)
                acc["ok_full"].append(ans in f.answer)
            print(f"  {n} tokens, doc {i + 1}/{n_docs} done", file=sys.stderr)
        m = {k: statistics.mean(float(x) for x in v) for k, v in acc.items()}
        m["tokens"] = n
        rows.append(m)
    print(f"{'tokens':>6} | {'TTFT acre':>9} {'cold':>6} {'full':>6} {'re-prefill':>10} {'speedup':>7} | "
          f"{'dec acre':>8} {'full':>6} {'x':>5} | {'KV ratio':>8} {'KV MB':>6} {'full MB':>7} | "
          f"{'fetch s':>7} {'hidden':>6} | {'rec idx':>7} {'rec l1':>6} | {'acre ok':>7} {'full ok':>7}")
    for m in rows:
        print(f"{m['tokens']:>6} | {m['ttft_acre']:>9.3f} {m['ttft_acre_cold']:>6.3f} {m['ttft_full']:>6.3f} "
              f"{m['ttft_reprefill']:>10.2f} {m['ttft_reprefill'] / m['ttft_acre']:>7.1f} | "
              f"{m['dec_acre']:>8.1f} {m['dec_full']:>6.1f} {m['dec_full'] / m['dec_acre']:>5.2f} | "
              f"{m['kv_ratio']:>8.3f} {m['kv_bytes_acre'] / 1e6:>6.1f} {m['kv_bytes_full'] / 1e6:>7.1f} | "
              f"{m['fetch_s']:>7.3f} {m['hidden']:>6.2f} | {m['rec_index']:>7.2f} {m['rec_l1']:>6.2f} | "
              f"{m['ok_acre']:>7.2f} {m['ok_full']:>7.2f}")
    if batches:
        print(f"{'tokens':>6} | {'batch':>5} | {'step ms acre':>12} {'full':>7} | {'ms/token acre':>13} {'full':>7} | "
              f"{'x':>5}")
        for m in rows:
            for b in batches:
                a, f = m[f"dec{b}_acre"], m[f"dec{b}_full"]
                print(f"{m['tokens']:>6} | {b:>5} | {a:>12.1f} {f:>7.1f} | {a / b:>13.1f} {f / b:>7.1f} | {f / a:>5.2f}")
    last = rows[-1]
    head = {"tokens": last["tokens"],
            "ttft_speedup_vs_reprefill": last["ttft_reprefill"] / last["ttft_acre"],
            "ttft_speedup_vs_full_cached": last["ttft_full"] / last["ttft_acre"],
            "decode_speedup_vs_full": last["dec_full"] / last["dec_acre"],
            **{f"decode_speedup_vs_full_batch{b}": last[f"dec{b}_full"] / last[f"dec{b}_acre"] for b in batches},
            "kv_ratio": last["kv_ratio"], "refill_hidden_share": last["hidden"],
            "recall_index": last["rec_index"], "recall_l1": last["rec_l1"],
            "index_share_of_kv": last["index_share"]}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "bench_ask.json").write_text(json.dumps({"rows": rows, "headline": head}, indent=2))
    print(json.dumps(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
