"""Choose the coverage rule's settings for distinct places by the locator's recall on probe seeds.

The evaluation seeds its tasks with `--seed 0`; this tool builds the same families with another seed
(default 7), so its documents never appear in the evaluation. Per task it ingests the document (kept in
`--store`, so a second run or another grid reuses it), records the locator index's raw chunk scores for
the question (pass 1, `p_power` 1; once per `--distances` setting, `locator_distance`) and the chunks
that hold the task's needles. Every setting of the
volume rule is then applied offline to the same scores: p ∝ score^power, the coverage rule at each
coverage level, with and without distinct places (`volume.distinct_order` / `coverage_places_k`), the
top chunks plus their neighbours. Prints, per setting and family/length, the needle-chunk recall (all of
a task's needle chunks, as `tools/eval.py` reports it), the refilled share of the document (KV of the
refilled chunks only, not L1) and k. No answers are generated: scores come from `tools/eval.py`.

    python tools/tune_places.py --model gemma-3-270m --store /tmp/pl16 \\
        --grid "niah_single_prose:16384:0.1,0.5,0.9:1" --grid "niah_multikey,niah_multivalue,niah_multiquery,qa_local:16384:0.5:2"
    python tools/tune_places.py --model gemma-3-270m --store /tmp/pl32 --grid "niah_multivalue:32000:0.5:4"

Ends with one JSON line: per setting, the per-cell means.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

POWERS = (2.0, 3.0, 4.0)
COVERAGES = (0.9, 0.95, 0.97, 0.98, 0.99)


def record(args) -> list[dict]:
    """Ingest each probe task (or find it in the store) and record its raw locator scores."""
    from acre_model.engine import Engine
    from acre_model.policies import PlanContext, make_policy
    from acre_store import EmbeddedStore
    from tools.eval import Grid, build_tasks, needle_chunks

    eng = Engine.from_pretrained(args.model)
    tasks = [t for t in build_tasks(eng.tokenizer.encode, [Grid.parse(g) for g in args.grid], [], None, args.seed)
             if t.needle_spans]
    store = EmbeddedStore(args.store)
    have = {d.name: d.doc_id for d in store.list()}
    rows = []
    for i, t in enumerate(tasks):
        doc_id = have.get(t.task_id) or eng.ingest(t.doc_text, store=store, name=t.task_id).doc_id
        doc = eng.load_document(doc_id, store)
        q = torch.tensor(eng.tokenizer.question_ids(t.question, t.answer_prefix))
        ctx = PlanContext(eng.model, doc, q)  # one pass 1 for every distance
        for dist in args.distances:
            scores = make_policy("acre", p_power=1.0, locator_distance=dist).locate(ctx)
            rows.append({"task_id": t.task_id, "family": t.family, "length": t.n_tokens_target or doc.n_tokens,
                         "distance": dist, "scores": scores.tolist(),
                         "needle_chunks": sorted(needle_chunks(eng.tokenizer, t, doc))})
        print(f"  {i + 1}/{len(tasks)} {t.task_id}", file=sys.stderr)
    return rows


def plan(scores: torch.Tensor, power: float, coverage: float, distinct: bool, k_max: int, radius: int
         ) -> tuple[int, list[int]]:
    """The coverage rule's k and refilled chunks on raw scores: `acre` with these knobs plans them."""
    from acre_model import locator, volume
    from acre_model.policies import make_policy

    pol = make_policy("acre", p_power=power, coverage=coverage, distinct=distinct, k_max=k_max, neighbors=radius)
    p = locator.to_distribution(scores, pol.p_power)
    k = pol.volume(p)
    return k, volume.with_neighbors(pol.choose(None, p, k), radius, p.numel())


def table(rows: list[dict], k_max: int, radius: int) -> dict:
    out = {}
    for power, coverage, distinct, dist in itertools.product(
            POWERS, COVERAGES, (False, True), dict.fromkeys(r.get("distance") for r in rows)):
        cells = defaultdict(lambda: defaultdict(float))
        for r in (r for r in rows if r.get("distance") == dist):
            s = torch.tensor(r["scores"])
            k, chunks = plan(s, power, coverage, distinct, k_max, radius)
            need = set(r["needle_chunks"])
            c = cells[f"{r['family']}/{r['length']}"]
            c["recall"] += len(need & set(chunks)) / len(need)
            c["refilled_share"] += len(chunks) / s.numel()
            c["k"] += k
            c["n"] += 1
        name = f"p{power:g} c{coverage:g}{' distinct' if distinct else ''}{'' if dist is None else f' d{dist}'}"
        out[name] = {cell: {m: round(v / c["n"], 4) for m, v in c.items() if m != "n"} | {"n": int(c["n"])}
                     for cell, c in sorted(cells.items())}
    return out


def distances(text: str) -> list[int | None]:
    """'none,64,512' -> [None, 64, 512]"""
    try:
        out = [None if d.strip() == "none" else int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--distances takes 'none' or integers >= 0 separated by commas, got {text!r}")
    if any(d is not None and d < 0 for d in out):
        raise argparse.ArgumentTypeError(f"--distances must be >= 0, got {text!r}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a prepared model (default: the default model)")
    ap.add_argument("--grid", action="append", required=True, metavar="FAMILIES:LENGTHS:DEPTHS:N",
                    help="probe tasks, as tools/eval.py's --grid (repeatable)")
    ap.add_argument("--seed", type=int, default=7, help="probe seed (the evaluation's is 0)")
    ap.add_argument("--store", required=True, help="embedded store directory; probe documents are kept there")
    ap.add_argument("--k-max", type=int, default=6)
    ap.add_argument("--neighbors", type=int, default=1)
    ap.add_argument("--distances", default="none", type=distances, metavar="D1,D2,...",
                    help="locator_distance settings to score with ('none': each key at its own position)")
    args = ap.parse_args(argv)
    if args.seed == 0:
        ap.error("--seed 0 builds the evaluation's own tasks; probe settings on another seed")
    res = table(record(args), args.k_max, args.neighbors)
    for name, cells in res.items():
        print(f"{name:<22} " + "  ".join(f"{cell}: recall {c['recall']:.2f} refilled {100 * c['refilled_share']:.1f}% "
                                         f"k {c['k']:.1f}" for cell, c in cells.items()))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
