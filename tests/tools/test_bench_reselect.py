"""tools/bench_reselect.py on the default model: one multi-value document asked twice in one batch through
the scheduler, with re-selection off and on; the report's numbers are the answers'."""
from __future__ import annotations

import json

import pytest

from tools.bench_reselect import main as bench_main


def test_off_and_on_in_one_round(capsys, tmp_path):
    assert bench_main(["--docs", "1", "--copies", "2", "--length", "1024", "--max-new-tokens", "8",
                       "--rounds", "1", "--reselect", "4", "--out", str(tmp_path / "o")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((tmp_path / "o" / "results.json").read_text()) == out
    assert out["batch"] == 2 and out["reselect"] == 4 and len(out["rounds"]) == 1
    (r,) = out["rounds"]
    off, on = r["off"], r["on"]
    assert off["chunks_joined"] == 0 and off["mean_new_tokens"] <= 8 and on["mean_new_tokens"] <= 8
    # re-selection only adds chunks: the active cache never shrinks
    assert on["kv_ratio"] >= off["kv_ratio"] and (on["chunks_joined"] > 0) == (on["kv_ratio"] > off["kv_ratio"])
    assert r["wall_ratio"] == round(on["wall_s"] / off["wall_s"], 3) > 0
    assert out["wall_ratio"] == [r["wall_ratio"]]


@pytest.mark.parametrize("flag", ["--copies", "--reselect", "--rounds"])
def test_bad_counts_are_refused(flag):
    with pytest.raises(SystemExit, match=flag):
        bench_main([flag, "0"])
