"""tools/eval.py and tools/eval_report.py: aggregation and reports on synthetic rows; the quick run (slow)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import eval_report
from tools.eval import Grid, check_one_model, main_methods, reselect_methods, resolved, sweep_methods
from tools.eval import main as eval_main

ROOT = Path(__file__).resolve().parents[2]
REPORT_FILES = ("results.md", "needle_heatmap.png", "accuracy_vs_kv.png", "ttft_vs_length.png", "results.jsonl")


def _row(task, method, score, kv, *, family="niah_single_prose", group="niah", length=1024, depth=0.5,
         curve=None, sweep=False, answer="42", recall=None):
    return {"task_id": task, "family": family, "group": group, "metric": "string_match", "length": length,
            "n_tokens": length, "depth": depth, "method": method, "curve": curve or method.split("@")[0],
            "sweep": sweep, "policy": method.split("@")[0], "params": {}, "answer": answer, "score": score,
            "kv_ratio": kv, "ttft_s": 0.1 * length / 1024, "total_s": 0.2, "k": 2, "n_refilled": 3,
            "entropy": 0.5, "needle_recall": recall, "ingest_s": 1.0}


@pytest.fixture
def rows():
    rs = []
    for length in (1024, 2048):
        for depth in (0.0, 1.0):
            t = f"niah_single_prose/{length}/d{depth:.2f}/0"
            rs += [_row(t, "full", 1.0, 1.0, length=length, depth=depth),
                   _row(t, "acre", 1.0, 0.2, length=length, depth=depth, recall=1.0),
                   _row(t, "streaming", 0.0, 0.15, length=length, depth=depth, answer="11"),
                   _row(t, "streaming@0.4", 1.0 if depth else 0.0, 0.4, length=length, depth=depth, sweep=True),
                   _row(t, "l1-only", 0.0, 0.05, length=length, depth=depth, answer="", recall=0.0)]
    rs += [_row("vt/1024/-/0", m, s, kv, family="vt", group="multi-hop", depth=None)
           for m, s, kv in (("full", 0.5, 1.0), ("acre", 1.0, 0.3), ("streaming", 0.0, 0.15), ("l1-only", 0.0, 0.05))]
    return rs


def test_summary_scores_ratios_and_agreement(rows):
    s = eval_report.summarize(rows)
    assert set(s) == {"full", "acre", "streaming", "l1-only"}  # sweep points are not main rows
    assert s["acre"]["groups"] == {"niah": 1.0, "multi-hop": 1.0}
    assert s["full"]["score"] == pytest.approx((1.0 + 0.5) / 2)  # mean of the group means
    assert s["acre"]["kv_ratio"] == pytest.approx((4 * 0.2 + 0.3) / 5)
    assert s["acre"]["needle_recall"] == 1.0 and s["streaming"]["needle_recall"] is None
    assert s["acre"]["agree_full"] == 1.0 and s["streaming"]["agree_full"] == pytest.approx(1 / 5)  # agrees on vt only
    for m in s.values():
        assert 0.0 <= m["score"] <= 1.0 and 0.0 < m["kv_ratio"] <= 1.0


def test_agreement_is_a_word_prefix():
    assert eval_report.agrees("4987089. This number is rare", "4987089.")
    assert eval_report.agrees("The answer: Dunholt", "the answer dunholt!")
    assert not eval_report.agrees("11.", "4987089.")
    assert not eval_report.agrees("", "4987089")


def test_curves_and_heatmap_cells(rows):
    pts = eval_report.curve_points(rows)["niah_single_prose"]
    assert [p[2] for p in pts["streaming"]] == ["streaming", "streaming@0.4"]  # sorted by KV ratio
    assert pts["streaming"][1][1] == pytest.approx(0.5)
    assert pts["full"][0][:2] == (1.0, 1.0)
    cells = eval_report.heatmap_cells(rows)
    assert cells["acre"][(2048, 1.0)] == 1.0 and "streaming@0.4" not in cells


def test_write_report_files_and_headline(rows, tmp_path):
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")
    loaded = eval_report.load_rows(tmp_path / "results.jsonl")
    assert len(loaded) == len(rows)  # the torn last line is ignored
    head = eval_report.write_report(loaded, tmp_path, "python tools/eval.py --quick", 12.0)
    for name in REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    md = (tmp_path / "results.md").read_text()
    assert "| acre |" in md and "## Ablations" in md and "needle_heatmap.png" in md
    assert "## Refill volume and locator recall per family" in md and "| niah_single_prose | 2.0 (2–2) |" in md
    assert head["methods"]["acre"]["score"] == 1.0 and head["methods"]["full"]["kv_ratio"] == 1.0
    assert "## Score by document length" in md and "| streaming | 0.0 (15.0%) | 0.0 (15.0%) |" in md


def test_report_names_every_command_whose_rows_it_holds(rows, tmp_path):
    eval_report.write_report(rows, tmp_path, ["python tools/eval.py --out A", "python tools/eval.py --out B"])
    md = (tmp_path / "results.md").read_text()
    assert "Commands (the rows of every run" in md
    assert "- `python tools/eval.py --out A`" in md and "- `python tools/eval.py --out B`" in md
    eval_report.write_report(rows, tmp_path, "python tools/eval.py --quick")
    assert "Command: `python tools/eval.py --quick`" in (tmp_path / "results.md").read_text()


def _paired_rows():
    """Two families of different size: acre beats fixed-k on 2 of 4 needle tasks, ties vt's 2 tasks."""
    rs = []
    for i, (a, f) in enumerate(((1.0, 0.0), (1.0, 0.0), (0.0, 0.0), (1.0, 1.0))):
        t = f"niah_single_prose/1024/d0.50/{i}"
        rs += [_row(t, "acre", a, 0.1), _row(t, "fixed-k", f, 0.2), _row(t, "acre+reselect8", 1.0, 0.2)]
    for i in range(2):
        t = f"vt/1024/-/{i}"
        rs += [_row(t, m, 0.5, 0.1, family="vt", group="multi-hop", depth=None) for m in ("acre", "fixed-k")]
    rs.append(_row("vt/1024/-/9", "acre", 1.0, 0.1, family="vt", group="multi-hop", depth=None))  # fixed-k lacks it
    rs.append(_row("niah_single_prose/1024/d0.50/0", "fixed-k@0.4", 1.0, 0.4, sweep=True))  # sweep rows do not count
    return rs


def test_paired_difference_weighs_families_equally_and_brackets_it():
    rs = _paired_rows()
    p = eval_report.paired(rs, "acre", "fixed-k")
    assert p["n"] == 6 and (p["up"], p["down"]) == (2, 0)  # the task fixed-k lacks is left out
    assert p["families"] == {"niah_single_prose": 0.5, "vt": 0.0}
    assert p["diff"] == pytest.approx(0.25)  # (0.5 + 0.0) / 2, not 2 / 6 over the tasks
    lo, hi = p["ci95"]
    assert 0.0 <= lo <= p["diff"] <= hi <= 0.5  # resampled needle tasks move it between 0 and 1 -> 0..0.5
    assert lo < hi
    assert eval_report.paired(rs, "acre", "fixed-k") == p  # seeded: the same interval every time
    assert eval_report.paired(rs, "acre", "full") is None
    same = eval_report.paired(rs, "acre", "acre")
    assert same["diff"] == 0.0 and same["ci95"] == (0.0, 0.0)


def test_report_shows_paired_differences_and_the_cli_compares_two_methods(tmp_path, capsys):
    rs = _paired_rows()
    assert eval_report.paired_pairs({"acre", "fixed-k", "acre+reselect8", "streaming"}) == [
        ("acre", "fixed-k"), ("acre+reselect8", "acre")]
    eval_report.write_report(rs, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "## Paired differences (score points)" in md
    assert "| acre | fixed-k | 6 | +25.0 |" in md and "| acre+reselect8 | acre | 4 | +25.0 |" in md
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rs) + "\n")
    assert eval_report.main([str(tmp_path), "--paired", "acre,fixed-k", "--families", "vt"]) == 0
    out = capsys.readouterr().out
    assert "| acre | fixed-k | 2 | +0.0 | [+0.0, +0.0] | 0 / 0 |" in out and "per family: vt +0.0" in out
    with pytest.raises(SystemExit, match="no rows for quest"):
        eval_report.main([str(tmp_path), "--paired", "acre,quest"])
    with pytest.raises(SystemExit, match="two methods"):
        eval_report.main([str(tmp_path), "--paired", "acre"])
    assert eval_report.main([str(tmp_path), "--paired", "acre,fixed-k", "--lengths", "1024"]) == 0
    assert "| acre | fixed-k | 6 | +25.0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no rows of length 4096"):
        eval_report.main([str(tmp_path), "--paired", "acre,fixed-k", "--lengths", "4096"])
    with pytest.raises(SystemExit, match="no rows of cwe"):
        eval_report.main([str(tmp_path), "--paired", "acre,fixed-k", "--families", "cwe"])
    with pytest.raises(SystemExit, match="filter a --paired comparison"):
        eval_report.main([str(tmp_path), "--families", "vt"])


def test_score_by_length_counts_main_rows_only(rows):
    per = eval_report.by_length(rows)
    assert "streaming@0.4" not in per  # sweep points are not main rows
    assert per["acre"][1024] == pytest.approx((1.0, (2 * 0.2 + 0.3) / 3, 3))  # two needles and vt at 1024
    assert per["acre"][2048] == pytest.approx((1.0, 0.2, 2))
    assert per["full"][1024][0] == pytest.approx(2.5 / 3)
    table = eval_report.length_table(per)
    assert table.splitlines()[0] == "| method | 1024 | 2048 |"
    assert "| full | 83.3 (100.0%) | 100.0 (100.0%) |" in table and table.endswith("| tasks | 3 | 2 |")


def test_family_volume_reports_k_spread_kv_and_recall_per_family():
    rows = [_row("mv/0", "acre", 1.0, 0.3, family="niah_multivalue", recall=1.0),
            _row("mv/1", "acre", 0.0, 0.2, family="niah_multivalue", recall=0.5),
            _row("s/0", "acre", 1.0, 0.1, recall=1.0),
            _row("s/0", "fixed-k", 1.0, 0.2, recall=1.0),
            _row("s/0", "streaming", 0.0, 0.15),  # not a volume method
            _row("s/0", "acre@k1", 1.0, 0.05, sweep=True)]  # sweep rows are not the main rows
    rows[0]["k"], rows[1]["k"], rows[2]["k"], rows[3]["k"] = 5, 4, 1, 3
    vol = eval_report.family_volume(rows)
    assert set(vol) == {"niah_multivalue", "niah_single_prose"}
    assert vol["niah_multivalue"]["acre"]["k"] == (4.5, 4, 5)
    assert vol["niah_multivalue"]["acre"]["recall"] == pytest.approx(0.75)
    assert vol["niah_multivalue"]["acre"]["kv_ratio"] == pytest.approx(0.25)
    assert vol["niah_single_prose"]["acre"]["k"] == (1, 1, 1) and vol["niah_single_prose"]["acre"]["n"] == 1
    assert set(vol["niah_single_prose"]) == {"acre", "fixed-k"}
    table = eval_report.family_volume_table(vol)
    assert "| niah_multivalue | 4.5 (4–5) | 25.0% | 75.0 | — | — | — |" in table


def test_methods_and_grid():
    names = [m.name for m in main_methods()]
    assert {"full", "acre", "acre-exact", "acre-focus", "acre-entropy", "acre-l1", "streaming", "h2o", "snapkv",
            "l1-only", "random", "fixed-k", "quest", "infllm", "acre+complete", "acre+distinct", "fixed-k+distinct",
            "acre+places", "acre+near", "acre+near+places", "acre+cov0.6", "acre+support",
            "fixed-k+support", "acre+support+complete"} == set(names)
    opt_in = {m.name: m for m in main_methods() if m.opt_in}
    assert set(opt_in) == {"acre+complete", "acre+distinct", "fixed-k+distinct", "acre+places", "acre+near",
                          "acre+near+places", "acre+cov0.6", "acre+support", "fixed-k+support",
                          "acre+support+complete"}
    plain = {m.name: resolved(m) for m in main_methods() if not m.opt_in}
    for m in opt_in.values():  # an opt-in method is not a default method under another name
        assert resolved(m) not in plain.values(), m.name
    from acre_model.policies import policy_names

    assert {m.policy for m in main_methods()} == set(policy_names())  # a new policy must join the table
    sweep = sweep_methods()
    assert all(m.sweep and m.curve in eval_report.CURVES for m in sweep)
    # acre-exact and acre-focus differ from each other; one of them is asked once with plain acre
    by = {m.name: resolved(m) for m in main_methods()}
    assert by["acre-exact"] != by["acre-focus"] and by["acre"] in (by["acre-exact"], by["acre-focus"])
    g = Grid.parse("niah_multikey,vt:1024,2048:0.25,0.75:2")
    assert g.families == ("niah_multikey", "vt") and g.lengths == (1024, 2048) and g.depths == (0.25, 0.75)
    with pytest.raises(SystemExit):
        Grid.parse("vt:1024")


def test_reselect_adds_acre_and_each_opt_in_acre_method_with_re_selection():
    ms = {m.name: m for m in reselect_methods(main_methods(), 8)}
    assert set(ms) == {"acre+reselect8", "acre+complete+reselect8", "acre+distinct+reselect8",
                       "acre+places+reselect8", "acre+near+reselect8", "acre+near+places+reselect8",
                       "acre+cov0.6+reselect8", "acre+support+reselect8",
                       "acre+support+complete+reselect8", "fixed-k+reselect8"}
    assert not ms["acre+reselect8"].opt_in and ms["acre+reselect8"].params == {}
    opt_in = {m.name: m for m in main_methods() if m.opt_in}
    fk = ms.pop("fixed-k+reselect8")  # fixed-k's plan with the same re-selection: acre+reselect8's baseline
    assert fk.policy == "fixed-k" and fk.reselect == 8 and fk.params == {} and fk.opt_in
    for name, m in ms.items():
        assert m.reselect == 8 and m.policy == "acre"
        if name != "acre+reselect8":  # the same settings as the method it extends, asked only when named
            assert m.opt_in and m.params == opt_in[name.removesuffix("+reselect8")].params
    assert len({resolved(m) for m in [*ms.values(), fk]}) == len(ms) + 1


def test_one_model_per_output_directory():
    legacy = [_row("vt/1024/-/0", "acre", 1.0, 0.3)]  # written before rows named their model
    check_one_model(legacy, "SmolLM2", default="SmolLM2")
    check_one_model([{**legacy[0], "model": "gemma"}], "gemma", default="SmolLM2")
    with pytest.raises(SystemExit, match="rows of SmolLM2; this run asks gemma"):
        check_one_model(legacy, "gemma", default="SmolLM2")


def test_model_option_asks_that_model_and_names_it_in_every_row(default_model_path, tmp_path):
    """`--model FOLDER` end to end on one 1k-token task; a directory holding another model's rows is refused
    before anything is loaded or asked."""
    out = tmp_path / "ev"
    argv = ["--model", str(default_model_path), "--grid", "niah_single_prose:1024:0.5:1", "--methods",
            "full,acre", "--sweep", "none", "--threads", "0", "--out", str(out)]
    assert eval_main(argv) == 0
    rows = eval_report.load_rows(out / "results.jsonl")
    assert sorted(r["method"] for r in rows) == ["acre", "full"]
    assert {r["model"] for r in rows} == {default_model_path.name}
    assert f"model {default_model_path.name}" in (out / "results.md").read_text()
    # a report rewritten later names the command and the engine recorded with the run, not today's
    run = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])
    (out / "runs.jsonl").write_text(json.dumps({**run, "defaults": "commit 0000000; recorded"}) + "\n")
    assert eval_main(["--out", str(out), "--report-only"]) == 0
    md = (out / "results.md").read_text()
    assert "Engine: commit 0000000; recorded" in md and f"Command: `{run['command']}`" in md
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps({**rows[0], "task_id": "x", "model": "gemma-3-270m"}) + "\n")
    with pytest.raises(SystemExit, match="gemma-3-270m"):
        eval_main(argv)
    assert len(eval_report.load_rows(out / "results.jsonl")) == 3


@pytest.mark.slow
def test_quick_run_writes_reports(tmp_path):
    """`--quick` end to end on the default model (minutes on a 2-core CPU)."""
    out = tmp_path / "eval"
    p = subprocess.run([sys.executable, "tools/eval.py", "--quick", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    head = json.loads(p.stdout.strip().splitlines()[-1])
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    methods = head["methods"]
    assert {"full", "acre", "acre-exact", "acre-focus", "streaming", "h2o", "snapkv", "l1-only"} <= set(methods)
    for m, s in methods.items():
        assert 0.0 <= s["score"] <= 1.0 and 0.0 < s["kv_ratio"] <= 1.0, (m, s)
    assert methods["full"]["kv_ratio"] == 1.0 and methods["acre"]["kv_ratio"] < 1.0
    rows = eval_report.load_rows(out / "results.jsonl")
    assert all(0.0 <= r["score"] <= 1.0 for r in rows) and any(r["sweep"] for r in rows)
    # resumable: a second run finds every (task, method) done and asks nothing
    p2 = subprocess.run([sys.executable, "tools/eval.py", "--quick", "--out", str(out)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0 and len(eval_report.load_rows(out / "results.jsonl")) == len(rows)


def test_engine_defaults_name_the_commit_and_say_when_the_engine_has_uncommitted_edits():
    from tools.eval import engine_defaults

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)

    rev = git("rev-parse", "--short", "HEAD").stdout.strip()
    dirty = git("diff", "--quiet", "HEAD", "--", "acre_model", "acre_store").returncode != 0
    d = engine_defaults("m")
    assert d.startswith(f"commit {rev}") and "; model m; ask defaults {'coverage': 0.9" in d
    assert ("uncommitted changes" in d) == dirty


def _write_run(d: Path, rows: list[dict], command: str, defaults: str) -> Path:
    d.mkdir(parents=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "runs.jsonl").write_text(json.dumps({"command": command, "seconds": 10.0, "defaults": defaults,
                                              "finished": "2026-12-03 12:00:00"}) + "\n")
    return d


def test_merge_takes_the_first_sources_row_per_task_and_method_and_keeps_every_run_record(tmp_path):
    t0, t1 = "niah_single_prose/1024/d0.50/0", "niah_single_prose/1024/d0.50/1"
    new = _write_run(tmp_path / "new", [_row(t0, "acre", 1.0, 0.2), _row(t1, "acre", 1.0, 0.2)],
                     "python tools/eval.py --out new", "commit bbbbbbb")
    old = _write_run(tmp_path / "old", [_row(t0, "acre", 0.0, 0.2), _row(t0, "full", 0.0, 1.0),
                                        _row(t0, "streaming", 0.0, 0.15)],
                     "python tools/eval.py --out old", "commit aaaaaaa")
    out = tmp_path / "merged"
    assert eval_main(["--out", str(out), "--merge", str(new), "--merge", str(old / "results.jsonl"),
                      "--methods", "acre,full"]) == 0
    rows = eval_report.load_rows(out / "results.jsonl")
    got = {(r["task_id"], r["method"]): r["score"] for r in rows}
    assert got == {(t0, "acre"): 1.0, (t1, "acre"): 1.0, (t0, "full"): 0.0}  # new wins; streaming filtered
    md = (out / "results.md").read_text()
    assert "--out new" in md and "--out old" in md
    assert "commit bbbbbbb | commit aaaaaaa" in md
    # a merge writes a new directory only, and refuses sources of two models
    with pytest.raises(SystemExit, match="already holds rows"):
        eval_main(["--out", str(out), "--merge", str(new)])
    gemma = _write_run(tmp_path / "gemma", [{**_row(t0, "acre", 1.0, 0.02), "model": "gemma-3-270m"}], "c", "d")
    smol = _write_run(tmp_path / "smol", [{**_row(t1, "acre", 1.0, 0.2), "model": "SmolLM2"}], "c", "d")
    with pytest.raises(SystemExit, match="several models"):
        eval_main(["--out", str(tmp_path / "m2"), "--merge", str(gemma), "--merge", str(smol)])
    with pytest.raises(SystemExit, match="no results.jsonl"):
        eval_main(["--out", str(tmp_path / "m3"), "--merge", str(tmp_path / "nowhere")])
