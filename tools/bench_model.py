"""Benchmark our forward pass against HF transformers on the same weights, same machine, same run.

Measures prefill tokens/s at 1k and 4k tokens (or --lengths) and decode ms/token at each context, and
checks that a decode step allocates no per-token copy of the whole cache. Prints a table; the last stdout
line is one JSON object with the ratios (ours / transformers; > 1 means we are faster).

    python tools/bench_model.py [--quick] [--out DIR]
    python tools/bench_model.py --model gemma-3-270m --lengths 8192,32768 --quick   # hybrid local/global
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch


def _time(fn, repeat: int, warm=None) -> tuple[float, object]:
    """Median seconds of `repeat` calls of fn after one warm-up call (of `warm`, else fn), and the last result."""
    (warm or fn)()  # warm-up: allocator, thread pool and RoPE tables, so neither side pays first-call costs
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def bench_ours(model, ids: torch.Tensor, n_decode: int, repeat: int, warm_len: int = 0) -> tuple[float, float]:
    def prefill(x=ids):
        c = model.new_cache(capacity=len(x) + n_decode)
        model.prefill(x, c, chunk_size=len(x))
        return c

    pre, cache = _time(prefill, repeat, (lambda: prefill(ids[:warm_len])) if warm_len else None)
    tok = torch.tensor([ids[-1].item()])
    model(tok, cache)  # warm
    t0 = time.perf_counter()
    for _ in range(n_decode):
        model(tok, cache)
    return pre, (time.perf_counter() - t0) / n_decode


def bench_hf(hf, ids: torch.Tensor, n_decode: int, repeat: int, warm_len: int = 0) -> tuple[float, float]:
    from transformers import DynamicCache

    def prefill(x=ids):
        with torch.no_grad():
            # with the config: a sliding-window layer's cache keeps only its window (Gemma 3)
            c = DynamicCache(config=hf.config)
            # logits_to_keep=1: only the last position's logits, as ours returns
            hf(x[None], past_key_values=c, use_cache=True, logits_to_keep=1)
        return c

    pre, cache = _time(prefill, repeat, (lambda: prefill(ids[:warm_len])) if warm_len else None)
    tok = ids[-1:].view(1, 1)
    with torch.no_grad():
        hf(tok, past_key_values=cache, use_cache=True)
        t0 = time.perf_counter()
        for i in range(n_decode):
            hf(tok, past_key_values=cache, use_cache=True)
    return pre, (time.perf_counter() - t0) / n_decode


def decode_copies_whole_cache(model, n_ctx: int) -> bool:
    """True if a decode step reallocates the cache buffers (it must not, once capacity is reserved)."""
    cache = model.new_cache(capacity=n_ctx + 16)
    model.prefill(torch.randint(0, model.cfg.vocab_size, (n_ctx,)), cache, chunk_size=1024)
    ptrs = [lay.k.data_ptr() for lay in cache.layers]
    for _ in range(8):
        model(torch.tensor([5]), cache)
    return ptrs != [lay.k.data_ptr() for lay in cache.layers]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and decode steps")
    ap.add_argument("--out", default=None, help="write results.json here")
    ap.add_argument("--model", default=None)
    ap.add_argument("--lengths", default="1024,4096", help="comma-separated context lengths")
    ap.add_argument("--warmup-tokens", type=int, default=0, metavar="N",
                    help="warm up each side on the first N tokens instead of a whole prefill (long contexts)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    from acre_model.convert import resolve
    from acre_model.weights import load_model

    torch.manual_seed(0)
    path = resolve(args.model)
    ours = load_model(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa").eval()
    lengths = [int(x) for x in args.lengths.split(",") if x]
    repeat = 1 if args.quick else 5
    n_decode = 16 if args.quick else 48
    rows = []
    results = {"model": path.name, "threads": torch.get_num_threads()}
    for j, n in enumerate(lengths):
        ids = torch.randint(100, ours.cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(n))
        # interleave, alternating who goes first, so that machine noise hits both sides alike
        if j % 2 == 0:
            o_pre, o_dec = bench_ours(ours, ids, n_decode, repeat, args.warmup_tokens)
            h_pre, h_dec = bench_hf(hf, ids, n_decode, repeat, args.warmup_tokens)
        else:
            h_pre, h_dec = bench_hf(hf, ids, n_decode, repeat, args.warmup_tokens)
            o_pre, o_dec = bench_ours(ours, ids, n_decode, repeat, args.warmup_tokens)
        rows.append((n, n / o_pre, n / h_pre, 1000 * o_dec, 1000 * h_dec))
        results[f"prefill_{n}_tok_s"] = {"ours": n / o_pre, "hf": n / h_pre, "ratio": h_pre / o_pre}
        results[f"decode_{n}_ms"] = {"ours": 1000 * o_dec, "hf": 1000 * h_dec, "ratio": h_dec / o_dec}
    copies = decode_copies_whole_cache(ours, min(lengths[-1], 4096))
    print(f"{'ctx':>6} | {'prefill tok/s ours':>18} {'hf':>10} {'ratio':>6} | {'decode ms/tok ours':>18} {'hf':>8} {'ratio':>6}")
    for n, op, hp, od, hd in rows:
        print(f"{n:>6} | {op:>18.0f} {hp:>10.0f} {op / hp:>6.2f} | {od:>18.1f} {hd:>8.1f} {hd / od:>6.2f}")
    print(f"decode step reallocates the cache: {copies}")
    head = {f"prefill_{n // 1024}k_ratio": results[f"prefill_{n}_tok_s"]["ratio"] for n in lengths}
    last = lengths[-1]
    head.update({f"decode_{last // 1024}k_ratio": results[f"decode_{last}_ms"]["ratio"],
                 f"decode_{last // 1024}k_ms": results[f"decode_{last}_ms"]["ours"],
                 "decode_copies_cache": copies})
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "bench_model.json").write_text(json.dumps({**results, **head}, indent=2))
    print(json.dumps(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
