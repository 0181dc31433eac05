"""tools/tune_volume.py's offline comparison: rules scored on recorded (task, k) answers, and the
leave-one-split-out check, on synthetic probe rows (no model)."""
from __future__ import annotations

import json

import pytest

from tools import tune_volume


def _probe(family: str, split: str, peaks: int, k_max: int = 6) -> dict:
    """A task whose evidence lies in `peaks` chunks of 8: answered right exactly when k == peaks."""
    p = [1.0] * peaks + [0.05] * (8 - peaks)
    asks = [{"k": k, "answer": "", "score": float(k == peaks), "kv_ratio": 0.05 * k} for k in range(1, k_max + 1)]
    return {"task_id": f"{family}/{split}", "family": family, "split": split, "p": p, "asks": asks}


@pytest.fixture
def rows():
    return [_probe(f, s, n) for s in ("seedA", "seedB") for f, n in (("one", 1), ("four", 4))]


def test_rules_are_scored_on_the_recorded_answers_and_against_fixed_k3(rows):
    fixed, res = tune_volume.scored(rows, [("peaks", 0.7, 6), ("fixed", 2)])
    assert [e["score"] for e in fixed] == [50.0, 0.0, 0.0, 50.0, 0.0, 0.0]
    peaks = res[0]
    assert peaks["score"] == 100.0 and peaks["vs_k3"] == 100.0  # one chunk for one peak, four for four
    assert peaks["families"]["one"]["k_mean"] == 1 and peaks["families"]["four"]["k_mean"] == 4
    assert peaks["kv"] == pytest.approx((0.05 + 0.2) / 2)
    assert peaks["gain"] == pytest.approx(100.0 - peaks["fixed_same_kv"])
    assert res[1]["score"] == 0.0 and res[1]["vs_k3"] == 0.0


def test_leave_one_split_out_scores_the_chosen_rule_on_the_split_it_never_saw(rows):
    cv = tune_volume.cross_validate(rows, max_kv=0.3)
    assert [c["held_out"] for c in cv] == ["seedA", "seedB"]
    for c in cv:
        assert c["n"] == 2 and c["vs_k3_test"] == 100.0 and c["gain_test"] > 0
        assert c["default_vs_k3_test"] == 100.0  # acre's coverage rule also gives 1 and 4 chunks here
    # a split whose four-peak task is answered at k = 1 only: the margin found elsewhere vanishes there
    odd = rows + [dict(_probe("four", "seedC", 1), p=[1.0] * 4 + [0.05] * 4)]
    c = {x["held_out"]: x for x in tune_volume.cross_validate(odd, max_kv=0.3)}["seedC"]
    assert c["gain_train"] > 0 and c["vs_k3_test"] == 0.0 and c["gain_test"] == 0.0


def test_report_only_merges_probe_directories(tmp_path, rows, capsys):
    for split in ("seedA", "seedB"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "probe.jsonl").write_text(
            "".join(json.dumps({k: v for k, v in r.items() if k != "split"}) + "\n" for r in rows if r["split"] == split))
    assert tune_volume.main(["--out", str(tmp_path / "seedA"), "--report-only", "--merge", str(tmp_path / "seedB")]) == 0
    out = capsys.readouterr().out
    assert "leave one split out" in out and "seedB" in out
    res = json.loads(out.strip().splitlines()[-1])
    assert len(res["cross_validation"]) == 2 and res["n_tasks"] == 4
    (tmp_path / "other" / "seedB").mkdir(parents=True)
    (tmp_path / "other" / "seedB" / "probe.jsonl").write_text((tmp_path / "seedB" / "probe.jsonl").read_text())
    with pytest.raises(SystemExit, match="distinct names"):
        tune_volume.main(["--out", str(tmp_path / "seedB"), "--report-only", "--merge", str(tmp_path / "other" / "seedB")])
    with pytest.raises(SystemExit, match="no probe rows"):
        tune_volume.main(["--out", str(tmp_path / "seedA"), "--report-only", "--merge", str(tmp_path / "nope")])


def test_params_name_the_locator_knobs_and_bad_ones_are_refused_before_any_ingest(tmp_path):
    assert tune_volume.locator_params('{"locator_score": "support", "support_min": 0.3}') == \
        {"locator_score": "support", "support_min": 0.3}
    assert tune_volume.locator_params("{}") == {}
    for bad, why in (("support", "JSON object"), ("[1]", "JSON object"), ('{"fixed_k": 2}', "set by every probe"),
                     ('{"locator_score": "mean"}', "locator_score"), ('{"no_such_knob": 1}', "no_such_knob")):
        with pytest.raises(SystemExit, match=why):
            tune_volume.main(["--out", str(tmp_path / "p"), "--params", bad])
    assert not (tmp_path / "p" / "probe.jsonl").exists()
