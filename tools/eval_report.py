"""Reports of an evaluation run (`tools/eval.py`): tables, plots and the headline JSON, from result rows.

Pure aggregation over the rows that `eval.py` appends to `results.jsonl` (one row per task and method),
so it needs no model and reruns from a finished or half-finished run:

    python tools/eval_report.py OUT_DIR        # rewrites OUT_DIR/results.md and the PNGs

A row holds: task_id, family, group, metric, length, n_tokens, depth, method, curve, sweep, policy,
params, answer (stop-cut), score, kv_ratio, ttft_s, total_s, k, n_refilled, needle_recall (None where a
policy selects no chunks), ingest_s.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

# Rows of the main table, in the paper's order (methods absent from a run are skipped).
MAIN_ORDER = ["full", "acre", "acre-exact", "acre-focus", "acre-entropy", "acre-l1", "quest", "infllm", "streaming",
              "h2o", "snapkv", "l1-only", "random", "fixed-k"]
ABLATION_ORDER = ["full", "acre", "acre-exact", "acre-focus", "acre-entropy", "acre-l1", "fixed-k", "random", "l1-only",
                  "quest", "infllm"]
GROUP_ORDER = ["niah", "multi-hop", "aggregation", "qa", "real"]
CURVES = ["acre", "fixed-k", "quest", "infllm", "streaming", "h2o", "snapkv"]


def load_rows(path: str | Path) -> list[dict]:
    """Rows of a results.jsonl; a torn last line (run killed mid-write) is ignored."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _normalize(s: str) -> list[str]:
    from tools.tasks.metrics import normalize_answer

    return normalize_answer(s or "").split()


def agrees(a: str, b: str) -> bool:
    """Same answer as `b` (full's): after normalisation one is a word-prefix of the other.

    NOTE: a prefix, not equality: greedy decoding often goes on after the answer ("4987089. This number
    is ..."), and a longer continuation is not a different answer.
    """
    x, y = _normalize(a), _normalize(b)
    n = min(len(x), len(y))
    return (n > 0 and x[:n] == y[:n]) or (not x and not y)


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return mean(xs) if xs else None


def _ordered(names, order):
    return [m for m in order if m in names] + sorted(n for n in names if n not in order)


def add_agreement(rows: list[dict]) -> None:
    """Sets row["agree_full"] (1/0, None without a `full` row on the task), in place."""
    full = {r["task_id"]: r["answer"] for r in rows if r["method"] == "full"}
    for r in rows:
        r["agree_full"] = float(agrees(r["answer"], full[r["task_id"]])) if r["task_id"] in full else None


def summarize(rows: list[dict]) -> dict:
    """Per main method: mean score overall, per group and per family, KV ratio, TTFT, recall, agreement."""
    add_agreement(rows)
    out: dict[str, dict] = {}
    by_method = defaultdict(list)
    for r in rows:
        if not r.get("sweep"):
            by_method[r["method"]].append(r)
    for m, rs in by_method.items():
        groups, fams = defaultdict(list), defaultdict(list)
        for r in rs:
            groups[r["group"]].append(r["score"])
            fams[r["family"]].append(r["score"])
        out[m] = {
            "n": len(rs),
            # mean over groups, so a group with many tasks does not dominate (the paper's "avg" column)
            "score": mean(mean(v) for v in groups.values()),
            "score_tasks": mean(r["score"] for r in rs),
            "groups": {g: mean(v) for g, v in groups.items()},
            "families": {f: mean(v) for f, v in fams.items()},
            "kv_ratio": mean(r["kv_ratio"] for r in rs),
            "ttft_s": mean(r["ttft_s"] for r in rs),
            "needle_recall": _mean(r.get("needle_recall") for r in rs),
            "agree_full": _mean(r.get("agree_full") for r in rs),
            "k": _mean(r.get("k") for r in rs),
            "niah": _mean(r["score"] for r in rs if r["group"] == "niah"),
        }
    return out


def paired(rows: list[dict], a: str, b: str, n_boot: int = 5000, seed: int = 0) -> dict | None:
    """Method `a` against `b` on the tasks both answered (not sweep rows): per family the mean score
    difference, the difference averaged over the families (each family weighs the same, as in the family
    tables), answers up/down, and a 95% paired bootstrap interval of that average (tasks resampled with
    replacement within each family, `n_boot` times, seeded). None when no task has both."""
    score = defaultdict(dict)
    for r in rows:
        if not r.get("sweep") and r["method"] in (a, b):
            score[r["task_id"]][r["method"]] = (r["family"], r["score"])
    diffs = defaultdict(list)
    for by in score.values():
        if a in by and b in by:
            diffs[by[a][0]].append(by[a][1] - by[b][1])
    if not diffs:
        return None
    fams = sorted(diffs)
    avg = mean(mean(diffs[f]) for f in fams)
    rng = random.Random(seed)
    boot = sorted(mean(mean(rng.choices(diffs[f], k=len(diffs[f]))) for f in fams) for _ in range(n_boot))
    lo, hi = boot[int(0.025 * n_boot)], boot[min(n_boot - 1, int(0.975 * n_boot))]
    return {"a": a, "b": b, "n": sum(len(v) for v in diffs.values()), "diff": avg, "ci95": (lo, hi),
            "up": sum(d > 0 for v in diffs.values() for d in v), "down": sum(d < 0 for v in diffs.values() for d in v),
            "families": {f: mean(diffs[f]) for f in fams}}


def paired_table(results: list[dict]) -> str:
    lines = ["| a | b | tasks | a − b (mean of the families) | 95% interval | tasks up / down |", "|---|---|---|---|---|---|"]
    for p in results:
        lo, hi = p["ci95"]
        lines.append(f"| {p['a']} | {p['b']} | {p['n']} | {100 * p['diff']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                     f"| {p['up']} / {p['down']} |")
    return "\n".join(lines)


# The paired comparisons a report shows, where both methods have rows: `acre` against each of these.
PAIRED_AGAINST = ["full", "fixed-k", "acre-entropy", "quest", "infllm"]


def paired_pairs(methods) -> list[tuple[str, str]]:
    """`acre` against the PAIRED_AGAINST methods present, and each `acre+...` variant against `acre`."""
    if "acre" not in methods:
        return []
    return [("acre", m) for m in PAIRED_AGAINST if m in methods] + \
        [(m, "acre") for m in sorted(methods) if m.startswith("acre+")]


def _fmt(x, pct=True, nd=1) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.{nd}f}" if pct else f"{x:.{nd}f}"


def main_table(summary: dict) -> str:
    groups = _ordered({g for s in summary.values() for g in s["groups"]}, GROUP_ORDER)
    head = "| method | " + " | ".join(groups) + " | avg | KV ratio | TTFT s |"
    lines = [head, "|" + "---|" * (len(groups) + 4)]
    for m in _ordered(summary, MAIN_ORDER):
        s = summary[m]
        cells = [_fmt(s["groups"].get(g)) for g in groups]
        lines.append(f"| {m} | " + " | ".join(cells) +
                     f" | **{_fmt(s['score'])}** | {_fmt(s['kv_ratio'])}% | {s['ttft_s']:.2f} |")
    return "\n".join(lines)


def family_table(summary: dict) -> str:
    fams = sorted({f for s in summary.values() for f in s["families"]})
    lines = ["| method | " + " | ".join(fams) + " |", "|" + "---|" * (len(fams) + 1)]
    for m in _ordered(summary, MAIN_ORDER):
        lines.append(f"| {m} | " + " | ".join(_fmt(summary[m]["families"].get(f)) for f in fams) + " |")
    return "\n".join(lines)


def ablation_table(summary: dict) -> str:
    lines = ["| method | avg score | needle tasks | needle-chunk recall | agrees with full | mean k | KV ratio |",
             "|---|---|---|---|---|---|---|"]
    for m in _ordered([m for m in summary if m in ABLATION_ORDER], ABLATION_ORDER):
        s = summary[m]
        lines.append(f"| {m} | {_fmt(s['score'])} | {_fmt(s['niah'])} | {_fmt(s['needle_recall'])} | "
                     f"{_fmt(s['agree_full'])} | {_fmt(s['k'], pct=False)} | {_fmt(s['kv_ratio'])}% |")
    return "\n".join(lines)


# Methods whose volume (k) and locator recall the per-family table shows: the adaptive rule, the seed's rule
# and the fixed-k ablation, and the retrieval peers.
VOLUME_METHODS = ["acre", "acre-entropy", "fixed-k", "quest", "infllm"]


def family_volume(rows: list[dict]) -> dict:
    """{family: {method: {"k": (mean, min, max) | None, "kv_ratio": mean, "recall": mean | None, "n": n}}}
    over the main rows of VOLUME_METHODS: does k move with how spread a family's evidence is?"""
    cells: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not r.get("sweep") and r["method"] in VOLUME_METHODS:
            cells[r["family"]][r["method"]].append(r)
    out: dict[str, dict] = {}
    for fam, by_m in cells.items():
        out[fam] = {}
        for m, rs in by_m.items():
            ks = [r["k"] for r in rs if r.get("k") is not None]
            out[fam][m] = {"k": (mean(ks), min(ks), max(ks)) if ks else None,
                           "kv_ratio": mean(r["kv_ratio"] for r in rs),
                           "recall": _mean(r.get("needle_recall") for r in rs), "n": len(rs)}
    return out


def family_volume_table(vol: dict) -> str:
    """One row per family: per method, mean k (min-max), mean KV ratio and needle-chunk recall."""
    methods = _ordered({m for d in vol.values() for m in d}, VOLUME_METHODS)
    lines = ["| family | " + " | ".join(f"{m} k | {m} KV | {m} recall" for m in methods) + " |",
             "|" + "---|" * (3 * len(methods) + 1)]
    for fam in sorted(vol):
        cells = []
        for m in methods:
            c = vol[fam].get(m)
            if c is None:
                cells += ["—"] * 3
                continue
            k = "—" if c["k"] is None else f"{c['k'][0]:.1f} ({c['k'][1]}–{c['k'][2]})"
            cells += [k, f"{_fmt(c['kv_ratio'])}%", _fmt(c["recall"])]
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_points(rows: list[dict]) -> dict:
    """{family: {curve: [(kv_ratio, score, method, n)]}} over the tasks that have sweep rows, + "full"."""
    swept = {r["task_id"] for r in rows if r.get("sweep")}
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["task_id"] not in swept:
            continue
        curve = r.get("curve") or r["method"]
        if curve in CURVES or r["method"] == "full":
            # the main-table acre (default mode) belongs to its curve; acre-exact/-focus do not
            if r["method"] in ("acre-exact", "acre-focus"):
                continue
            acc[(r["family"], "full" if r["method"] == "full" else curve)][r["method"]].append(r)
    out: dict = defaultdict(dict)
    for (fam, curve), by_m in acc.items():
        pts = [(mean(x["kv_ratio"] for x in rs), mean(x["score"] for x in rs), m, len(rs)) for m, rs in by_m.items()]
        out[fam][curve] = sorted(pts)
    return dict(out)


def sweep_table(points: dict) -> str:
    lines = ["| family | method | (KV ratio %, score %) ... |", "|---|---|---|"]
    for fam in sorted(points):
        for curve in CURVES + ["full"]:
            if curve in points[fam]:
                cells = ", ".join(f"({100 * k:.0f}, {100 * s:.0f})" for k, s, _, _ in points[fam][curve])
                lines.append(f"| {fam} | {curve} | {cells} |")
    return "\n".join(lines)


def _main_by_length(rows: list[dict]) -> dict:
    """{method: {length: [rows]}} over the main (not swept) rows, lengths in order."""
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not r.get("sweep"):
            acc[r["method"]][r["length"]].append(r)
    return {m: dict(sorted(d.items())) for m, d in acc.items()}


def _lengths(per: dict) -> list:
    """The lengths of a {name: {length: ...}} table, in order."""
    return sorted({n for d in per.values() for n in d})


def ttft_by_length(rows: list[dict]) -> dict:
    """{method: {length: mean ttft}} for main methods, plus "ingest (prefill)" per length."""
    out = {m: {n: mean(r["ttft_s"] for r in rs) for n, rs in d.items()} for m, d in _main_by_length(rows).items()}
    ing = defaultdict(dict)
    for r in rows:
        if not r.get("sweep") and r.get("ingest_s") is not None:
            ing[r["length"]][r["task_id"]] = r["ingest_s"]
    if ing:
        out["ingest (prefill)"] = {n: mean(d.values()) for n, d in sorted(ing.items())}
    return out


def by_length(rows: list[dict]) -> dict:
    """{method: {length: (mean score, mean KV ratio, tasks)}} over the main (not swept) rows."""
    return {m: {n: (mean(r["score"] for r in rs), mean(r["kv_ratio"] for r in rs), len(rs)) for n, rs in d.items()}
            for m, d in _main_by_length(rows).items()}


def length_table(per: dict) -> str:
    """Rows: methods; columns: lengths; cells: "score (KV%)"; the last row counts tasks per length."""
    lens = _lengths(per)
    lines = ["| method | " + " | ".join(str(n) for n in lens) + " |", "|" + "---|" * (len(lens) + 1)]
    for m in _ordered(per, MAIN_ORDER):
        lines.append(f"| {m} | " + " | ".join(
            f"{_fmt(per[m][n][0])} ({_fmt(per[m][n][1])}%)" if n in per[m] else "—" for n in lens) + " |")
    counts = {n: max(d[n][2] for d in per.values() if n in d) for n in lens}
    lines.append("| tasks | " + " | ".join(str(counts[n]) for n in lens) + " |")
    return "\n".join(lines)


def heatmap_cells(rows: list[dict]) -> dict:
    """{method: {(length, depth): mean score}} over needle tasks (group niah) with a depth."""
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not r.get("sweep") and r["group"] == "niah" and r.get("depth") is not None:
            acc[r["method"]][(r["length"], r["depth"])].append(r["score"])
    return {m: {c: mean(v) for c, v in d.items()} for m, d in acc.items()}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(plt, n: int, max_cols: int, width: float, height: float):
    """A figure with n panels in rows of at most max_cols; the unused cells of the last row hidden."""
    cols = min(max_cols, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(width * cols, height * math.ceil(n / cols)),
                             squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, axes


def _save(plt, fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def plot_heatmaps(cells: dict, path: Path) -> bool:
    if not cells:
        return False
    plt = _plt()
    methods = _ordered(cells, MAIN_ORDER)
    lengths = sorted({n for d in cells.values() for n, _ in d})
    depths = sorted({dp for d in cells.values() for _, dp in d})
    fig, axes = _panels(plt, len(methods), 4, 2.6, 2.2)
    for ax, m in zip(axes.flat, methods):
        grid = [[cells[m].get((n, dp), float("nan")) for n in lengths] for dp in depths]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_title(m, fontsize=9)
        ax.set_xticks(range(len(lengths)), [f"{round(n / 1000, 1):g}k" for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6)
    fig.suptitle("needle tasks: score (%) by length (x) and depth (y)", fontsize=9)
    return _save(plt, fig, path)


def plot_curves(points: dict, path: Path) -> bool:
    if not points:
        return False
    plt = _plt()
    fams = sorted(points)
    fig, axes = _panels(plt, len(fams), 3, 3.3, 2.6)
    for ax, fam in zip(axes.flat, fams):
        for curve in CURVES:
            pts = points[fam].get(curve)
            if pts:
                ax.plot([100 * k for k, *_ in pts], [100 * s for _, s, *_ in pts], marker="o", ms=3, label=curve)
        if "full" in points[fam]:
            ax.axhline(100 * points[fam]["full"][0][1], color="k", ls="--", lw=0.8, label="full")
        ax.set_title(fam, fontsize=9)
        ax.set_xlabel("KV ratio (%)", fontsize=8)
        ax.set_ylabel("score (%)", fontsize=8)
        ax.set_ylim(-3, 103)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6)
    return _save(plt, fig, path)


def plot_ttft(ttft: dict, path: Path) -> bool:
    if not ttft:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m in _ordered(ttft, MAIN_ORDER + ["ingest (prefill)"]):
        xs = sorted(ttft[m])
        ax.plot(xs, [ttft[m][x] for x in xs], marker="o", ms=3, label=m,
                ls="--" if m == "ingest (prefill)" else "-")
    ax.set_xlabel("document tokens", fontsize=8)
    ax.set_ylabel("seconds", fontsize=8)
    ax.set_yscale("log")
    ax.set_title("time to first token on the cached document", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, ncol=2)
    return _save(plt, fig, path)


def headline(summary: dict) -> dict:
    return {"methods": {m: {"score": round(s["score"], 4), "kv_ratio": round(s["kv_ratio"], 4), "n": s["n"]}
                        for m, s in summary.items()}}


def write_report(rows: list[dict], out: str | Path, command: str | list[str] = "", seconds: float | None = None,
                 note: str = "") -> dict:
    """Writes results.md and the PNGs under `out`; returns the headline dict (per-method score, KV ratio).
    `command`: the command that made the rows, or the commands of every run whose rows were merged here."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    points = curve_points(rows)
    ttft = ttft_by_length(rows)
    plots = {"needle_heatmap.png": plot_heatmaps(heatmap_cells(rows), out / "needle_heatmap.png"),
             "accuracy_vs_kv.png": plot_curves(points, out / "accuracy_vs_kv.png"),
             "ttft_vs_length.png": plot_ttft(ttft, out / "ttft_vs_length.png")}
    n_tasks = len({r["task_id"] for r in rows})
    parts = ["# ACRE evaluation", ""]
    commands = [command] if isinstance(command, str) else list(command)
    commands = [c for c in commands if c]
    if len(commands) == 1:
        parts += [f"Command: `{commands[0]}`", ""]
    elif commands:
        parts += ["Commands (the rows of every run in this directory):", "",
                  *[f"- `{c}`" for c in commands], ""]
    if note:
        parts += [f"Engine: {note}", ""]
    parts += [f"{n_tasks} tasks, {len(rows)} (task, method) rows"
              + (f", {seconds / 60:.1f} min of ingesting and asking (all sessions)" if seconds is not None else "") + ".",
              "", "## Main table (score %, mean over tasks; avg = mean of the group columns)", "",
              main_table(summary), "", "## Per task family (score %)", "", family_table(summary), "",
              "## Ablations", "",
              "Needle-chunk recall: share of the chunks holding the facts the answer needs that the policy "
              "refilled (— for policies that select no chunks). Agreement: the answer equals `full`'s after "
              "normalisation (one a word-prefix of the other).", "", ablation_table(summary), ""]
    vol = family_volume(rows)
    if vol:
        parts += ["## Refill volume and locator recall per family", "",
                  "k: chunks the volume rule chose (mean, min–max over the family's tasks; neighbours come on "
                  "top); KV: mean KV ratio; recall: needle-chunk recall (all the facts' chunks, e.g. every "
                  "value of a multi-value task).", "", family_volume_table(vol), ""]
    pairs = [p for p in (paired(rows, a, b) for a, b in paired_pairs(summary)) if p]
    if pairs:
        parts += ["## Paired differences (score points)", "",
                  "On the tasks both methods answered: the mean score difference per family, averaged over the "
                  "families; the interval is a 95% paired bootstrap (tasks resampled within each family, 5000 "
                  "times, seed 0). An interval that excludes a target rules it out at these task counts.", "",
                  paired_table(pairs), ""]
    per_len = by_length(rows)
    if len(_lengths(per_len)) > 1:
        parts += ["## Score by document length (score %, mean over tasks; KV ratio in brackets)", "",
                  length_table(per_len), ""]
    if points:
        parts += ["## Accuracy vs KV ratio (budget sweep; tasks that were swept)", "", sweep_table(points), ""]
    lens = _lengths(ttft)
    ttft_lines = ["| method | " + " | ".join(str(n) for n in lens) + " |", "|" + "---|" * (len(lens) + 1)]
    for m in _ordered(ttft, MAIN_ORDER + ["ingest (prefill)"]):
        ttft_lines.append(f"| {m} | " + " | ".join(f"{ttft[m][n]:.2f}" if n in ttft[m] else "—" for n in lens) + " |")
    parts += ["## Time to first token (s) by document length", "", *ttft_lines, ""]
    parts += [f"![{name}]({name})" for name, ok in plots.items() if ok]
    (out / "results.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return headline(summary)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="a run's directory (its results.jsonl)")
    ap.add_argument("--paired", metavar="A,B", action="append", default=[],
                    help="print method A against method B (paired bootstrap) instead of rewriting the report; "
                         "repeatable")
    ap.add_argument("--families", help="with --paired: only these task families (comma-separated)")
    ap.add_argument("--lengths", help="with --paired: only these document lengths (comma-separated)")
    args = ap.parse_args(argv)
    d = Path(args.dir)
    rows = load_rows(d / "results.jsonl")
    if not rows:
        raise SystemExit(f"no result rows in {d / 'results.jsonl'}")
    if not args.paired:
        if args.families or args.lengths:
            raise SystemExit("--families and --lengths filter a --paired comparison; the report holds every row")
        print(json.dumps(write_report(rows, d)))
        return 0
    if args.families:
        keep = set(args.families.split(","))
        missing = keep - {r["family"] for r in rows}
        if missing:
            raise SystemExit(f"--families: no rows of {', '.join(sorted(missing))}")
        rows = [r for r in rows if r["family"] in keep]
    if args.lengths:
        lengths = {int(x) for x in args.lengths.split(",")}
        rows = [r for r in rows if r["length"] in lengths]
        if not rows:
            raise SystemExit(f"--lengths: no rows of length {args.lengths}")
    methods = {r["method"] for r in rows}
    for spec in args.paired:
        names = spec.split(",")
        if len(names) != 2:
            raise SystemExit(f"--paired takes two methods, A,B; got {spec!r}")
        unknown = [m for m in names if m not in methods]
        if unknown:
            raise SystemExit(f"--paired {spec}: no rows for {', '.join(unknown)} (methods: {', '.join(sorted(methods))})")
        p = paired(rows, *names)
        if p is None:
            raise SystemExit(f"--paired {spec}: no task has rows of both")
        print(paired_table([p]))
        print("per family: " + ", ".join(f"{f} {100 * v:+.1f}" for f, v in p["families"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
