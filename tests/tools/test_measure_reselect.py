"""tools/measure_reselect.py on the default model: one probe task asked with and without re-selection, and
the residual locator's view of the first plan."""
from __future__ import annotations

import json

import pytest

from tools.measure_reselect import main as measure_main


def test_one_multivalue_probe_task_with_and_without_reselection(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert measure_main(["--families", "niah_multivalue", "--lengths", "1024", "--depths", "0.5",
                         "--reselect", "4", "--store", str(tmp_path / "store"), "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    off, on, res = row["off"], row["on"], row["residual"]
    assert off["n_reselected"] == 0 and off["n_refilled"] == len(off["refilled_chunks"])
    # re-selection only adds: the first plan's chunks stay, and what joined is outside them
    assert set(off["refilled_chunks"]) <= set(on["refilled_chunks"])
    assert on["n_refilled"] == off["n_refilled"] + on["n_reselected"] and on["kv_ratio"] >= off["kv_ratio"]
    # the residual locator leaves the plan's tokens out: its best chunk is never one the plan holds
    assert 0.0 < res["share"] <= 1.0 and res["chunk"] not in off["refilled_chunks"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]["niah_multivalue"]
    assert summary["n"] == 1 and 0 <= summary["score_on"] <= 100
    shares = summary["residual_missed_needle"] or summary["residual_otherwise"]
    assert shares[2] == 1 and shares[0] == shares[1] == round(res["share"], 3)


def test_the_evaluation_seed_is_refused():
    with pytest.raises(SystemExit, match="seed 0"):
        measure_main(["--seed", "0"])
