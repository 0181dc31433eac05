"""Build the task suite and write it to `--out DIR/tasks.jsonl` (for inspection or a fixed run).

    python -m tools.tasks --quick --out /tmp/tasks
    python -m tools.tasks --lengths 4096 8192 --families niah_multikey vt --tokenizer default

Prints a table per family and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from acre_model.synth import byte_tokenize, whitespace_tokenize

from . import FAMILIES, build_suite, suite_size


def _tokenizer(name: str):
    if name == "words":
        return whitespace_tokenize
    if name == "bytes":
        return byte_tokenize
    from acre_model.paths import DEFAULT_MODEL, models_dir
    from acre_model.tokenizer import Tokenizer

    folder = models_dir() / DEFAULT_MODEL if name == "default" else Path(name)
    return Tokenizer.from_folder(folder).encode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.tasks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the --quick grid (default: the full grid)")
    ap.add_argument("--out", type=Path, help="write DIR/tasks.jsonl")
    ap.add_argument("--lengths", type=int, nargs="+", help="document lengths in tokens")
    ap.add_argument("--depths", type=float, nargs="+", help="needle depths in [0, 1]")
    ap.add_argument("--n-per-cell", type=int)
    ap.add_argument("--families", nargs="+", choices=list(FAMILIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default="default",
                    help="'default' (the prepared default model), 'words', 'bytes', or a model folder")
    args = ap.parse_args(argv)
    size = suite_size(args.quick)
    try:
        tokenize = _tokenizer(args.tokenizer)
    except Exception as e:  # a missing or unreadable model folder: one line, not a traceback
        print(f"error: tokenizer {args.tokenizer!r}: {e}", file=sys.stderr)
        return 1
    tasks = build_suite(tokenize, args.lengths or size.lengths, args.depths or size.depths,
                        args.n_per_cell or size.n_per_cell, seed=args.seed, families=args.families)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "tasks.jsonl").open("w") as f:
            for t in tasks:
                f.write(json.dumps(t.to_dict()) + "\n")
    rows: dict[str, list] = defaultdict(list)
    for t in tasks:
        rows[t.family].append(t)
    print(f"{'family':20s} {'tasks':>5s} {'metric':>12s} {'tokens (min-max)':>18s} {'max len err':>11s}")
    for fam, ts in rows.items():
        err = max(abs(t.n_tokens - t.n_tokens_target) / t.n_tokens_target for t in ts)
        lo, hi = min(t.n_tokens for t in ts), max(t.n_tokens for t in ts)
        print(f"{fam:20s} {len(ts):5d} {ts[0].metric:>12s} {f'{lo}-{hi}':>18s} {err:11.2%}")
    print(json.dumps({"n_tasks": len(tasks), "families": {f: len(ts) for f, ts in rows.items()},
                      "out": str(args.out / "tasks.jsonl") if args.out else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
