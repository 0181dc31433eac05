"""Choose the refill-volume rule by measurement on probe seeds (tasks kept apart from the evaluation).

The evaluation seeds its tasks with `--seed 0` (`tools/eval.py`: task i of a family uses "0:i"); this
tool builds the same families with another seed (default 7: "7:i"), so its documents, keys and values
never appear in the evaluation. Per task it ingests the document once, records the locator's chunk
scores (pass 1), and asks the question with the top k chunks (neighbours included) for every k in
1..K. Every volume rule picks the top k chunks of the same ranking and only differs in k, so one
(task, k) answer serves every rule: the rules are then compared offline on the recorded answers.

    python tools/tune_volume.py --out /tmp/vol            # measure, then print the comparison
    python tools/tune_volume.py --out /tmp/vol --report-only
    python tools/tune_volume.py --out /tmp/vol --report-only --merge /tmp/vol_seed8   # several splits

Prints, per rule: mean score per family, k's mean/min/max per family, the mean KV ratio, the fixed-k score
at the same mean KV (linear between the two fixed-k points around it) and the margin over fixed-k = 3 (the
evaluation's `fixed-k`). Over several probe directories (`--merge`), also a leave-one-split-out check: the
rule picked on the other directories, scored on the one left out.
Ends with one JSON line (the best coverage rule by its margin over fixed-k at equal KV, its per-family
numbers, and the cross-validation's rows).
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

FAMILIES = "niah_single_prose,niah_multivalue,niah_multiquery,cwe,fwe"
COVERAGES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
POWERS = (1.0, 2.0, 3.0, 4.0)
K_MAXES = (4, 6, 8)


def collect(args, out: Path, params: dict) -> None:
    """Ingest each probe task and ask it at k = 1..K with the locator's knobs `params` (`locator_params`); one
    JSON line per task in out/probe.jsonl."""
    from acre_model import volume
    from acre_model.convert import resolve
    from acre_model.engine import Engine
    from acre_model.policies import PlanContext, make_policy
    from acre_model.tokenizer import Tokenizer
    from acre_store import EmbeddedStore
    from tools.tasks import build_suite

    tok = Tokenizer.from_folder(resolve(None))
    depths = tuple(float(d) for d in args.depths.split(","))
    tasks = build_suite(tok.encode, [int(x) for x in args.lengths.split(",")], depths, 1, seed=args.seed,
                        families=args.families.split(","), n_per_length=len(depths))
    path = out / "probe.jsonl"
    done = {json.loads(line)["task_id"] for line in path.open()} if path.exists() else set()
    eng = Engine.from_pretrained()
    store = EmbeddedStore(str(out / "store"))
    t0 = time.perf_counter()
    for task in tasks:
        if task.task_id in done:
            continue
        info = eng.ingest(task.doc_text, store=store, name=task.task_id)
        doc = eng.load_document(info.doc_id, store)
        from tools.eval import needle_chunks

        need = sorted(needle_chunks(eng.tokenizer, task, doc)) if task.needle_spans else []
        q_ids = torch.tensor(eng.tokenizer.question_ids(task.question, task.answer_prefix))
        # raw locator scores: p_power 1 gives p ∝ score, any power is recomputed from it offline
        scores = make_policy("fixed-k", p_power=1.0, **params).locate(PlanContext(eng.model, doc, q_ids))
        asks = []
        order = scores.topk(scores.numel()).indices.tolist()
        for k in range(1, min(args.k_max, doc.n_chunks) + 1):
            a = eng.ask(info.doc_id, task.question, policy="fixed-k", answer_prefix=task.answer_prefix,
                        store=store, max_new_tokens=task.max_new_tokens, fixed_k=k, p_power=1.0, **params)
            assert a.refilled_chunks == volume.with_neighbors(order[:k], 1, doc.n_chunks)
            asks.append({"k": k, "answer": a.answer, "score": task.score(a.answer), "kv_ratio": a.kv_ratio})
        row = {"task_id": task.task_id, "family": task.family, "params": params, "n_tokens": info.n_tokens,
               "n_chunks": doc.n_chunks, "p": scores.tolist(), "needle_chunks": need, "asks": asks}
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        store.delete(info.doc_id)
        print(f"{task.task_id}: scores by k {[round(x['score'], 2) for x in asks]} "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr)


def locator_params(text: str) -> dict:
    """`--params`: a JSON object of the locator's policy knobs. Every ask sets `fixed_k` and `p_power` itself, so
    those are refused, as is anything `fixed-k` does not take (before any document is ingested)."""
    from acre_model.errors import InputError
    from acre_model.policies import make_policy

    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--params must be a JSON object: {e}") from None
    if not isinstance(params, dict):
        raise SystemExit(f"--params must be a JSON object, got {text!r}")
    if {"fixed_k", "p_power"} & set(params):
        raise SystemExit("--params: fixed_k and p_power are set by every probe ask; give the locator's knobs only")
    try:
        make_policy("fixed-k", **params)  # an unknown knob or a bad value
    except InputError as e:
        raise SystemExit(f"--params: {e}") from None
    return params


def rule_k(rule: tuple, p: torch.Tensor) -> int:
    """k of a rule on a task's raw score distribution p (power 1)."""
    from acre_model import volume
    from acre_model.locator import to_distribution

    kind = rule[0]
    if kind == "fixed":
        return rule[1]
    if kind == "entropy":  # acre-entropy: k_min 1, k_max 3, p_power 2
        q = to_distribution(p, 2.0)
        return volume.entropy_to_k(volume.normalized_entropy(q), 1, 3, q.numel())
    if kind == "coverage":
        _, c, power, k_max = rule
        return volume.coverage_to_k(to_distribution(p, power), c, 1, k_max)
    if kind == "peaks":  # chunks scoring at least r x the best one
        _, r, k_max = rule
        return max(1, min(k_max, int((p >= r * p.max()).sum())))
    raise ValueError(rule)


def name(rule: tuple) -> str:
    if rule[0] == "fixed":
        return f"fixed-k={rule[1]}"
    if rule[0] == "entropy":
        return "acre-entropy"
    if rule[0] == "coverage":
        return f"coverage c={rule[1]:g} pow={rule[2]:g} kmax={rule[3]}"
    return f"peaks r={rule[1]:g} kmax={rule[2]}"


def evaluate(rows: list[dict], rule: tuple) -> dict:
    """Per family: mean score, k mean/min/max, mean KV; and the means over families."""
    fams: dict[str, dict] = {}
    for r in rows:
        k = min(rule_k(rule, torch.tensor(r["p"], dtype=torch.float64)), len(r["asks"]))
        a = r["asks"][k - 1]
        f = fams.setdefault(r["family"], {"scores": [], "ks": [], "kv": []})
        f["scores"].append(a["score"])
        f["ks"].append(k)
        f["kv"].append(a["kv_ratio"])
    per = {fam: {"score": 100 * sum(v["scores"]) / len(v["scores"]), "k_mean": sum(v["ks"]) / len(v["ks"]),
                 "k_min": min(v["ks"]), "k_max": max(v["ks"]), "kv": sum(v["kv"]) / len(v["kv"]),
                 "n": len(v["ks"])} for fam, v in fams.items()}
    return {"rule": name(rule), "families": per,
            "score": sum(v["score"] for v in per.values()) / len(per),
            "kv": sum(v["kv"] for v in per.values()) / len(per)}


def fixed_at(curve: list[dict], kv: float) -> float:
    """fixed-k's mean score at mean KV `kv`, linear between its two points around it (clamped at the ends)."""
    pts = sorted((c["kv"], c["score"]) for c in curve)
    if kv <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if kv <= x1:
            return y0 + (y1 - y0) * (kv - x0) / (x1 - x0)
    return pts[-1][1]


PEAKS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

def _default_rule() -> tuple:
    """`acre`'s coverage rule with its defaults, read from the policy so the two cannot drift apart."""
    from acre_model.policies.chunk_policy import CoverageVolumePolicy as P

    return ("coverage", P.coverage, P.p_power, P.k_max)


DEFAULT_RULE = _default_rule()


def candidate_rules(K: int) -> list[tuple]:
    """Every rule the report compares, with k_max within the K that was asked."""
    rules = [("entropy",)] + [("coverage", c, pw, km) for km in K_MAXES for pw in POWERS for c in COVERAGES] \
        + [("peaks", r, km) for km in K_MAXES for r in PEAKS]
    return [r for r in rules if r[0] == "entropy" or r[-1] <= K]


def scored(rows: list[dict], rules: list[tuple]) -> tuple[list[dict], list[dict]]:
    """(fixed-k = 1..K, the rules), each with its gain over fixed-k at the same mean KV (`fixed_same_kv`,
    `gain`) and over fixed-k = 3, the evaluation's `fixed-k` (`vs_k3`)."""
    K = min(len(r["asks"]) for r in rows)
    fixed = [evaluate(rows, ("fixed", k)) for k in range(1, K + 1)]
    res = [evaluate(rows, r) for r in rules]
    for e in fixed + res:
        e["fixed_same_kv"] = fixed_at(fixed, e["kv"])
        e["gain"] = e["score"] - e["fixed_same_kv"]
        e["vs_k3"] = e["score"] - fixed[2]["score"] if K >= 3 else None
    return fixed, res


def report(rows: list[dict], max_kv: float) -> dict:
    fams = sorted({r["family"] for r in rows})
    K = min(len(r["asks"]) for r in rows)
    fixed, res = scored(rows, candidate_rules(K))
    short = {f: f.replace("niah_", "")[:10] for f in fams}
    head = f"{'rule':<32} {'avg':>5} {'KV%':>5} {'fixk@KV':>7} {'gain':>5} {'vs k=3':>6} | " + \
        " ".join(f"{short[f]:>10}" for f in fams) + " | k mean (min-max) per family"
    print(head)
    for e in fixed + res:
        fam_s = " ".join(f"{e['families'][f]['score']:>10.1f}" for f in fams)
        ks = " ".join(f"{e['families'][f]['k_mean']:.1f}({e['families'][f]['k_min']}-{e['families'][f]['k_max']})"
                      for f in fams)
        print(f"{e['rule']:<32} {e['score']:>5.1f} {100 * e['kv']:>5.1f} {e['fixed_same_kv']:>7.1f} "
              f"{e['gain']:>+5.1f} {_signed(e['vs_k3']):>6} | {fam_s} | {ks}")
    best = pick([e for e in res if e["rule"].startswith("coverage")], max_kv)
    return {"families": fams, "n_tasks": len(rows), "best_coverage": best,
            "entropy": next(e for e in res if e["rule"] == "acre-entropy"), "fixed": fixed}


def pick(results: list[dict], max_kv: float) -> dict | None:
    """The result with the largest gain over fixed-k at the same KV among those under `max_kv` mean KV (ties:
    the one with less KV); None if there is none."""
    cands = [e for e in results if e["kv"] <= max_kv]
    return max(cands, key=lambda e: (round(e["gain"], 6), -e["kv"])) if cands else None


def _signed(x: float | None) -> str:
    return f"{x:+5.1f}" if x is not None else f"{'—':>5}"


def cross_validate(rows: list[dict], max_kv: float) -> list[dict]:
    """Leave one split out (a split: the rows of one probe directory, e.g. one seed or one length): the rule
    with the largest gain over fixed-k at the same KV on the other splits (any rule but fixed-k, mean KV
    under `max_kv`), and how it and `acre`'s default do on the split left out. A rule whose margin holds
    only on the tasks it was picked on shows here."""
    splits = sorted({r["split"] for r in rows})
    K = min(len(r["asks"]) for r in rows)
    rules = candidate_rules(K)
    if DEFAULT_RULE not in rules:
        rules.append(DEFAULT_RULE)
    out = []
    for held in splits:
        train = [r for r in rows if r["split"] != held]
        test = [r for r in rows if r["split"] == held]
        if not train:
            continue
        _, res = scored(train, rules)
        best = pick(res, max_kv)
        if best is None:
            continue
        _, on_test = scored(test, [rules[res.index(best)], DEFAULT_RULE])
        out.append({"held_out": held, "n": len(test), "chosen": best["rule"],
                    "gain_train": best["gain"], "gain_test": on_test[0]["gain"], "vs_k3_test": on_test[0]["vs_k3"],
                    "default_gain_test": on_test[1]["gain"], "default_vs_k3_test": on_test[1]["vs_k3"]})
    return out


def load_probe_rows(dirs: list[Path]) -> list[dict]:
    """Rows of each directory's probe.jsonl, tagged with the directory's name as their split."""
    rows = []
    for d in dirs:
        path = d / "probe.jsonl"
        if not path.exists():
            raise SystemExit(f"no probe rows in {path}")
        rows += [dict(json.loads(line), split=d.name) for line in path.open()]
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):
        raise SystemExit(f"probe directories must have distinct names (each names a split): {', '.join(names)}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for probe.jsonl (resumable) and the store")
    ap.add_argument("--families", default=FAMILIES)
    ap.add_argument("--lengths", default="2048")
    ap.add_argument("--depths", default="0.2,0.4,0.6,0.8",
                    help="needle depths (one task each); depth-free families get as many tasks")
    ap.add_argument("--seed", type=int, default=7, help="probe seed (the evaluation uses 0)")
    ap.add_argument("--k-max", type=int, default=8, help="ask each task at k = 1..K")
    ap.add_argument("--max-kv", type=float, default=0.3, help="choose among rules with mean KV ratio below this")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--params", default="{}",
                    help="the locator's policy knobs for every ask, as a JSON object "
                         "(e.g. '{\"locator_score\": \"support\"}'); recorded in each probe row")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--merge", action="append", default=[], metavar="DIR",
                    help="report over this probe directory's rows too (repeatable; each directory is one split "
                         "of the cross-validation)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.seed == 0:
        raise SystemExit("seed 0 is the evaluation's: choose the rule on other seeds")
    if not args.report_only:
        params = locator_params(args.params)  # refused before any document is ingested
        torch.set_num_threads(args.threads)
        collect(args, out, params)
    rows = load_probe_rows([out] + [Path(d) for d in args.merge])
    res = report(rows, args.max_kv)
    if len({r["split"] for r in rows}) > 1:
        cv = cross_validate(rows, args.max_kv)
        print("\nleave one split out: the rule chosen on the other splits, on the split left out "
              "(gain: over fixed-k at the same mean KV; vs k=3: over fixed-k = 3)")
        for c in cv:
            print(f"  {c['held_out']:<14} n={c['n']:<3} chosen {c['chosen']:<30} gain {c['gain_train']:+5.1f} there, "
                  f"{c['gain_test']:+5.1f} here (vs k=3 {_signed(c['vs_k3_test'])}); acre's default here "
                  f"{c['default_gain_test']:+5.1f} (vs k=3 {_signed(c['default_vs_k3_test'])})")
        res["cross_validation"] = cv
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
