"""The evaluation (issue 5): every KV method on the same ingested documents, ablations, budget sweeps.

Each document is ingested once; then every method asks its question on the same cached state. Methods
are the engine's policies with their defaults (`acre` also as `acre-exact` / `acre-focus`); the budget
sweep adds token-level baselines at other KV budgets and `acre` at other `k_max`. One row per
(task, method) is appended to OUT/results.jsonl as soon as it is measured, so a killed run restarts
where it stopped (`--out` the same directory). Reports: OUT/results.md and PNGs (`tools/eval_report.py`).

    python tools/eval.py --quick --out /tmp/eval
    python tools/eval.py --out DIR --grid "niah_multivalue,cwe:2048:0.5:10" --reselect 8   # + acre+reselect8
    python tools/eval.py --out DIR --grid "niah_single_prose:1024,2048,4096,7800:0,0.25,0.5,0.75,1:1" \
        --grid "vt,cwe:2048,4096:-:2" --sweep "niah_single_prose:4096,7800"
    python tools/eval.py --out DIR --longbench data/hotpotqa.jsonl --limit 50   # real data, LongBench format
    python tools/eval.py --model gemma-3-270m --out DIR --grid "niah_single_prose:8192,16384,32000:0.5:2"
    python tools/eval.py --out DIR --merge NEWER_RUN --merge OLDER_RUN --methods full,acre   # one report

One output directory holds one model's rows (each row names it); asking another model there is refused.

Prints the main table; the last stdout line is one JSON object with per-method mean scores and KV ratios.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    # NOTE: run as `python tools/eval.py`: make `tools.*` importable like `python -m tools.eval` does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import eval_report  # noqa: E402

# Policies that pick L2 chunks: needle-chunk recall is defined for them (l1-only picks none: recall 0).
CHUNK_POLICIES = {"acre", "acre-entropy", "acre-l1", "fixed-k", "random", "l1-only", "quest", "infllm"}
SWEEP_BUDGETS = (0.05, 0.1, 0.2, 0.4)  # token-level baselines; their default (0.15) is the main row
SWEEP_K_MAX = (1, 2, 8)                # acre; the default k_max is the main row
SWEEP_FIXED_K = (1, 2, 4, 8)           # fixed-k, quest, infllm; their default (3, at least acre's mean KV) is the main row


@dataclass(frozen=True)
class Method:
    """One column of the comparison: a policy with explicit parameters (none: the engine's defaults)."""

    name: str
    policy: str
    params: dict = field(default_factory=dict, hash=False)
    curve: str = ""      # the accuracy-vs-KV curve this point belongs to
    sweep: bool = False  # budget-sweep point (not a row of the main table)
    reselect: int = 0    # Engine.ask(reselect=N): re-selection during decoding every N tokens (0: off)
    opt_in: bool = False  # asked only when --methods names it


def main_methods() -> list[Method]:
    ms = [Method("full", "full", curve="full"), Method("acre", "acre", curve="acre"),
          Method("acre-exact", "acre", {"mode": "exact"}), Method("acre-focus", "acre", {"mode": "focus"})]
    ms += [Method(p, p, curve=p) for p in ("acre-entropy", "acre-l1", "streaming", "h2o", "snapkv", "l1-only",
                                           "random", "fixed-k", "quest", "infllm")]
    ms += [Method("acre+complete", "acre", {"complete": True}, opt_in=True)]  # residual completion
    ms += [Method("acre+distinct", "acre", {"distinct": True}, opt_in=True),  # distinct places
           Method("fixed-k+distinct", "fixed-k", {"distinct": True}, opt_in=True),
           # distinct places with 97% coverage (chosen on Gemma 3 probe seeds; docs/results.md, "Distinct places")
           Method("acre+places", "acre", {"distinct": True, "coverage": 0.97}, opt_in=True)]
    # every index key scored at one distance before the question (chosen on Gemma 3 probe seeds; docs/results.md,
    # "One distance for every key"), alone and with distinct places at 95% coverage
    ms += [Method("acre+near", "acre", {"locator_distance": 64}, opt_in=True),
           Method("acre+near+places", "acre", {"locator_distance": 64, "distinct": True, "coverage": 0.95}, opt_in=True)]
    # a sharper volume: 60% coverage of p ∝ score^4 (the best rule over fixed-k on the pooled SmolLM2 probes of every
    # family; on the evaluation +0.8 over fixed-k, not better than acre: docs/results.md, "Every family on the probes")
    ms += [Method("acre+cov0.6", "acre", {"coverage": 0.6}, opt_in=True)]
    # the locator index's support scores (each question token's sharp shares on a chunk, summed; docs/results.md,
    # "Support": -3.2 against acre at 2k-4k), with acre's volume rule, with fixed-k's, and with residual completion
    # (what the residual locator still finds sharply, e.g. the other values of a multi-value key, joins before the
    # first token)
    ms += [Method("acre+support", "acre", {"locator_score": "support"}, opt_in=True),
           Method("fixed-k+support", "fixed-k", {"locator_score": "support"}, opt_in=True),
           Method("acre+support+complete", "acre", {"locator_score": "support", "complete": True}, opt_in=True)]
    return ms


def reselect_methods(mains: list[Method], every: int) -> list[Method]:
    """`--reselect N`: `acre+reselectN`, and each opt-in `acre` method with re-selection (`NAME+reselectN`, opt-in);
    `fixed-k+reselectN` (opt-in) is the same re-selection on `fixed-k`'s plan, its baseline."""
    ms = [Method(f"acre+reselect{every}", "acre", reselect=every),
          Method(f"fixed-k+reselect{every}", "fixed-k", reselect=every, opt_in=True)]
    ms += [Method(f"{m.name}+reselect{every}", m.policy, m.params, reselect=every, opt_in=True)
           for m in mains if m.opt_in and m.policy == "acre"]
    return ms


def sweep_methods() -> list[Method]:
    from acre_model.policies import make_policy

    budget, acre = make_policy("streaming").budget, make_policy("acre")
    ms = [Method(f"{p}@{b:g}", p, {"budget": b}, curve=p, sweep=True)
          for p in ("streaming", "h2o", "snapkv") for b in SWEEP_BUDGETS if b != budget]
    ms += [Method(f"acre@k{k}", "acre", {"k_max": k, "k_min": min(k, acre.k_min)}, curve="acre", sweep=True)
           for k in SWEEP_K_MAX if k != acre.k_max]
    ms += [Method(f"{p}@k{k}", p, {"fixed_k": k}, curve=p, sweep=True)
           for p in ("fixed-k", "quest", "infllm") for k in SWEEP_FIXED_K if k != make_policy(p).fixed_k]
    return ms


def resolved(m: Method) -> str:
    """What the engine will run: two methods with equal keys give the same answer (greedy), asked once."""
    from dataclasses import asdict

    from acre_model.policies import make_policy

    return json.dumps([m.policy, asdict(make_policy(m.policy, **m.params)), m.reselect], sort_keys=True, default=str)


@dataclass(frozen=True)
class Grid:
    """`families:lengths:depths:n` — depths "-" for the families' own default (depth-free families ignore it)."""

    families: tuple[str, ...]
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    n: int

    @classmethod
    def parse(cls, s: str) -> "Grid":
        try:
            fam, lens, deps, n = s.split(":")
            depths = (0.5,) if deps.strip() == "-" else tuple(float(x) for x in deps.split(","))
            return cls(tuple(fam.split(",")), tuple(int(x) for x in lens.split(",")), depths, int(n))
        except ValueError:
            raise SystemExit(f"bad --grid {s!r}; expected families:lengths:depths:n, "
                             f"e.g. niah_multikey,vt:1024,2048:0.25,0.75:1") from None


# --quick: under 10 minutes on a 2-core CPU shared with other work (measured: docs/results.md):
# 8 tasks at 1k-2k, the budget sweep on three of them.
QUICK_GRIDS = ["niah_single_prose:1024,2048:0.1,0.5,0.9:1", "niah_multikey,qa_local:2048:0.5:1"]
QUICK_SWEEP = ["niah_single_prose:2048"]
# The default run: the grid of docs/results.md (72 tasks, 1224 rows; 63 min at one thread on the 2-core
# dev CPU, or 33 min as the two halves documented there side by side): the single-needle grid up to the
# model's longest length (7.8k; 8192 context minus room for the question) at 5 depths, the other
# families at 2k and 4k, two tasks per cell, budget sweeps on the long needle tasks and at 4k.
FULL_GRIDS = ["niah_single_prose:1024,2048,4096,7800:0,0.25,0.5,0.75,1:2",
              "niah_multikey,niah_multivalue,niah_multiquery,qa_local:2048,4096:0.5:2",
              "vt,fwe,cwe,qa_global:2048,4096:-:2"]
FULL_SWEEP = ["niah_single_prose:4096,7800", "niah_multikey,qa_local:4096"]


def build_tasks(tokenize, grids: list[Grid], longbench: list[str], limit: int | None, seed: int):
    from tools.tasks import build_suite, read_longbench_jsonl

    tasks = []
    for g in grids:
        tasks += build_suite(tokenize, g.lengths, g.depths, g.n, seed=seed, families=g.families)
    for path in longbench:
        tasks += read_longbench_jsonl(path, tokenize, limit=limit)
    seen, out = set(), []
    for t in tasks:  # grids may overlap
        if t.task_id not in seen:
            seen.add(t.task_id)
            out.append(t)
    return out


def in_sweep(task, sweeps: list[tuple[set, set]]) -> bool:
    return any(task.family in fams and task.n_tokens_target in lens for fams, lens in sweeps)


def needle_chunks(tokenizer, task, doc) -> set[int]:
    """The chunks of a loaded document (DocState) that hold the task's needles."""
    out: set[int] = set()
    for span in task.needle_spans:
        out |= set(doc.chunks_of(tokenizer.document_token_span(task.doc_text, span)))
    return out


def group_of(family: str) -> str:
    from tools.tasks import FAMILIES

    return FAMILIES[family].group if family in FAMILIES else "real"


def run(args, tasks, methods_for, out: Path) -> float:
    """Asks every pending (task, method); appends rows to out/results.jsonl. Returns seconds spent."""
    from tqdm import tqdm

    from acre_model.engine import Engine
    from acre_model.errors import InputError
    from acre_store import EmbeddedStore
    from tools.tasks.metrics import cut_at_stop

    path = out / "results.jsonl"
    rows = eval_report.load_rows(path)
    done = {(r["task_id"], r["method"]) for r in rows}
    pending = [(t, [m for m in methods_for(t) if (t.task_id, m.name) not in done]) for t in tasks]
    pending = [(t, ms) for t, ms in pending if ms]
    total = sum(len(ms) for _, ms in pending)
    if not total:
        return 0.0
    eng = Engine.from_pretrained(str(args.model_path))
    store = EmbeddedStore(args.store or str(out / "store"))
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="ask", file=sys.stderr, dynamic_ncols=True)
    with path.open("a", encoding="utf-8") as f:
        for task, ms in pending:
            bar.set_description(task.task_id[:40])
            try:
                info = eng.ingest(task.doc_text, store=store, name=task.task_id)
            except InputError as e:
                print(f"skip {task.task_id}: {e}", file=sys.stderr)
                bar.update(len(ms))
                continue
            # NOTE: load the document's L1 before timing, so the first method's TTFT is not the L1 load.
            doc = eng.load_document(info.doc_id, store)
            need = needle_chunks(eng.tokenizer, task, doc) if task.needle_spans else set()
            answers: dict[str, object] = {}
            for m in ms:
                key = resolved(m)
                if key not in answers:
                    prm = dict(m.params)
                    if m.policy == "random":
                        prm.setdefault("seed", zlib.crc32(task.task_id.encode()))
                    answers[key] = eng.ask(info.doc_id, task.question, policy=m.policy,
                                           answer_prefix=task.answer_prefix, store=store,
                                           max_new_tokens=task.max_new_tokens, reselect=m.reselect, **prm)
                a = answers[key]
                pred = cut_at_stop(a.answer, task.stop)
                chunks = set(a.refilled_chunks)
                row = {
                    "task_id": task.task_id, "model": args.model_path.name, "family": task.family, "group": group_of(task.family),
                    "metric": task.metric, "length": task.n_tokens_target or info.n_tokens,
                    "n_tokens": info.n_tokens, "depth": task.depth, "method": m.name,
                    "curve": m.curve, "sweep": m.sweep, "policy": m.policy, "params": m.params,
                    "answer": pred, "score": task.score(a.answer), "kv_ratio": a.kv_ratio,
                    "ttft_s": a.ttft_s, "total_s": a.total_s, "k": a.k, "mode": a.mode,
                    "n_refilled": len(chunks), "entropy": a.entropy, "reselect": m.reselect,
                    "n_reselected": len(a.reselected_chunks),
                    "needle_recall": (len(need & chunks) / len(need)) if need and m.policy in CHUNK_POLICIES
                    else None,
                    "ingest_s": None if info.existed else info.seconds,
                }
                f.write(json.dumps(row) + "\n")
                f.flush()
                bar.update(1)
            if not args.keep_docs:
                store.delete(info.doc_id)  # a 4k-token document is ~190 MB of fp32 KV
    bar.close()
    return time.perf_counter() - t0


def engine_defaults(model: str | None = None) -> str:
    """The commit, the model and the acre defaults a run measured (they are still being tuned). Taken when
    the run starts: the code a run imported is the code of its start, whatever is committed meanwhile."""
    import subprocess
    from dataclasses import asdict

    from acre_model.doc_state import LayoutConfig
    from acre_model.policies import make_policy

    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=root, timeout=10).stdout.strip()
        # the engine's code differs from the commit's (uncommitted edits): say so
        if rev and subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "acre_model", "acre_store"],
                                  cwd=root, timeout=10).returncode:
            rev += " with uncommitted changes to acre_model/acre_store"
    except (OSError, subprocess.SubprocessError):
        rev = "?"
    acre = asdict(make_policy("acre"))
    prm = {k: acre[k] for k in ("coverage", "k_min", "k_max", "kv_budget", "neighbors", "mode")}
    prm.update(budget=make_policy("streaming").budget, fixed_k=make_policy("fixed-k").fixed_k)
    where = f"; model {model}" if model else ""
    return f"commit {rev or '?'}{where}; ask defaults {prm}; chunk_size {LayoutConfig().chunk_size}"


def check_one_model(rows: list[dict], model: str, default: str) -> None:
    """An output directory's rows come from one model (rows written before rows named their model are the
    default model's): mixing two would average answers of different models into one table."""
    others = sorted({r.get("model") or default for r in rows} - {model})
    if others:
        raise SystemExit(f"--out already holds rows of {', '.join(others)}; this run asks {model}: "
                         f"give another --out (one directory per model)")


def merge(out: Path, sources: list[str], methods: set[str] | None) -> None:
    """Rows of other output directories into a new one, for one report over runs made apart: for each
    (task, method) the row of the first source that has it (list the newer runs first), only `methods`
    when given; every source's run records (commands, engines, seconds) are kept beside them."""
    if eval_report.load_rows(out / "results.jsonl"):
        raise SystemExit(f"--merge writes a new directory; {out} already holds rows")
    rows, runs, seen = [], [], set()
    for src in sources:
        path = Path(src)
        res = path / "results.jsonl" if path.is_dir() else path
        if not res.is_file():
            raise SystemExit(f"--merge {src}: no results.jsonl there")
        n = 0
        for r in eval_report.load_rows(res):
            key = (r["task_id"], r["method"])
            if key in seen or (methods and r["method"] not in methods):
                continue
            seen.add(key)
            rows.append(r)
            n += 1
        runs += [r for r in eval_report.load_rows(res.parent / "runs.jsonl") if r not in runs]
        print(f"{src}: {n} rows", file=sys.stderr)
    models = {r.get("model") for r in rows if r.get("model")}
    if len(models) > 1:
        raise SystemExit(f"--merge: the sources hold rows of several models ({', '.join(sorted(models))})")
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs), encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small grid at 1k-2k tokens (minutes on a CPU)")
    ap.add_argument("--model", default=None,
                    help="a bundled model's name (e.g. gemma-3-270m) or a model folder (default: the default model)")
    ap.add_argument("--out", required=True, help="directory for results.jsonl, results.md and plots")
    ap.add_argument("--grid", action="append", default=None,
                    help="families:lengths:depths:n (repeatable; default: the full grid)")
    ap.add_argument("--sweep", action="append", default=None,
                    help="families:lengths whose tasks get the budget sweep (repeatable); 'none' for no sweep")
    ap.add_argument("--methods", default=None, help="comma list of method names (default: all)")
    ap.add_argument("--reselect", type=int, default=0, metavar="N",
                    help="add the method acre+reselectN: acre re-selecting chunks every N answer tokens (and "
                         "NAME+reselectN for each opt-in acre method, asked when --methods names it)")
    ap.add_argument("--longbench", action="append", default=[], help="a LongBench-format JSONL file")
    ap.add_argument("--limit", type=int, default=None, help="records per LongBench file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="embedded store directory (default OUT/store)")
    ap.add_argument("--keep-docs", action="store_true", help="keep ingested documents in the store")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default). NOTE: 1 by default: on a 2-core CPU shared "
                         "with other work, 2 threads made prefill 2x slower (measured), and asks are small")
    ap.add_argument("--report-only", action="store_true", help="rewrite the reports from results.jsonl")
    ap.add_argument("--merge", action="append", default=[], metavar="SRC",
                    help="(repeatable) write OUT from other runs' directories, the first source's row winning "
                         "per (task, method), only --methods when given; then the report. Asks nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(out, args.merge, set(args.methods.split(",")) if args.methods else None)
        args.report_only = True
    command = "python tools/eval.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    seconds = None
    if not args.report_only:
        from acre_model.tokenizer import Tokenizer
        from acre_model.convert import resolve

        grids = [Grid.parse(g) for g in (args.grid or (QUICK_GRIDS if args.quick else FULL_GRIDS))]
        sweep_specs = args.sweep or (QUICK_SWEEP if args.quick else FULL_SWEEP)
        sweeps = [] if sweep_specs == ["none"] else \
            [(set(s.split(":")[0].split(",")), {int(x) for x in s.split(":")[1].split(",")}) for s in sweep_specs]
        args.model_path = resolve(args.model)
        check_one_model(eval_report.load_rows(out / "results.jsonl"), args.model_path.name, resolve(None).name)
        tok = Tokenizer.from_folder(args.model_path)
        t0 = time.perf_counter()
        tasks = build_tasks(tok.encode, grids, args.longbench, args.limit, args.seed)
        print(f"{len(tasks)} tasks built in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        mains, swp = main_methods(), sweep_methods()
        if args.reselect:
            mains += reselect_methods(mains, args.reselect)
        if args.methods:
            keep = set(args.methods.split(","))
            unknown = keep - {m.name for m in mains + swp}
            if unknown:
                raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {[m.name for m in mains]}")
            mains = [m for m in mains if m.name in keep]
            swp = [m for m in swp if m.curve in keep]
        else:
            mains = [m for m in mains if not m.opt_in]

        def methods_for(task):
            return mains + (swp if in_sweep(task, sweeps) else [])

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        defaults = engine_defaults(args.model_path.name)
        seconds = run(args, tasks, methods_for, out)
        with (out / "runs.jsonl").open("a") as f:
            f.write(json.dumps({"command": command, "seconds": seconds,
                                "defaults": defaults,
                                "finished": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    # duration: all sessions that asked something in this directory (a resumed run has several)
    runs = [r for r in eval_report.load_rows(out / "runs.jsonl") if r.get("seconds")]
    commands = [command] if not args.report_only else []
    if runs:
        seconds = sum(r["seconds"] for r in runs)
        commands = list(dict.fromkeys(r["command"] for r in runs))  # every run whose rows are here, in order
    rows = eval_report.load_rows(out / "results.jsonl")
    model = next((r["model"] for r in rows if r.get("model")), None)
    # the engine the rows were asked with: the runs' records (a report rewritten later keeps them; a
    # resumed or merged directory may name several)
    note = " | ".join(dict.fromkeys(r["defaults"] for r in runs if r.get("defaults"))) or engine_defaults(model)
    head = eval_report.write_report(rows, out, commands, seconds, note=note)
    print(eval_report.main_table(eval_report.summarize(rows)))
    print(json.dumps(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
