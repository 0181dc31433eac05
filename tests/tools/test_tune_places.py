"""tools/tune_places.py applies each volume setting offline; it must plan as the policy itself does."""
from __future__ import annotations

import pytest
import torch

from acre_model import locator, volume
from acre_model.policies import make_policy
from tools.tune_places import plan, table


@pytest.mark.parametrize("distinct", [False, True])
@pytest.mark.parametrize("power, coverage", [(2.0, 0.9), (4.0, 0.9), (4.0, 0.97), (3.0, 0.99)])
def test_offline_plan_is_the_policys_plan(power, coverage, distinct):
    torch.manual_seed(1)
    for _ in range(20):
        scores = torch.rand(80) ** 6  # a few high chunks over a weak background, adjacent pairs included
        pol = make_policy("acre", p_power=power, coverage=coverage, distinct=distinct)
        p = locator.to_distribution(scores, pol.p_power)
        k = pol.volume(p)
        want = volume.with_neighbors(pol.choose(None, p, k), pol.neighbors, p.numel())
        assert plan(scores, power, coverage, distinct, pol.k_max, pol.neighbors) == (k, want)


def test_table_reports_recall_of_all_needle_chunks_per_cell():
    scores = torch.zeros(50)
    scores[[10, 11, 30]] = torch.tensor([1.0, 0.9, 0.8])  # one fact over 10-11, a second at 30
    rows = [{"task_id": "t/0", "family": "f", "length": 100, "scores": scores.tolist(), "needle_chunks": [10, 11, 30]},
            {"task_id": "t/1", "family": "f", "length": 100, "scores": scores.tolist(), "needle_chunks": [40]}]
    res = table(rows, k_max=6, radius=1)
    cell = res["p4 c0.97 distinct"]["f/100"]
    assert cell["n"] == 2 and cell["recall"] == pytest.approx((1.0 + 0.0) / 2)
    assert cell["k"] == 2  # two places: 10 (its neighbour 11 comes along) and 30


def test_one_probe_task_on_the_default_model_and_the_evaluation_seed_is_refused(tmp_path, capsys):
    import json

    from tools.tune_places import main

    grid = ["--grid", "niah_multivalue:1024:0.5:1", "--store", str(tmp_path / "store")]
    assert main(grid) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    cell = res["p4 c0.9"]["niah_multivalue/1024"]
    assert cell["n"] == 1 and 0 <= cell["recall"] <= 1 and 1 <= cell["k"] <= 6
    # the first m places with their neighbours cover the m best chunks, so coverage needs no more places than chunks
    assert res["p4 c0.97 distinct"]["niah_multivalue/1024"]["k"] <= res["p4 c0.97"]["niah_multivalue/1024"]["k"]
    assert main([*grid, "--distances", "none,64"]) == 0  # the kept document is found again, not ingested twice
    res2 = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert res2["p4 c0.9"] == res["p4 c0.9"]  # 'none': the keys at their own positions, as before
    assert res2["p4 c0.9 d64"]["niah_multivalue/1024"]["n"] == 1 and "p4 c0.9 d512" not in res2
    with pytest.raises(SystemExit):
        main([*grid, "--seed", "0"])
    with pytest.raises(SystemExit):
        main([*grid, "--distances", "none,-3"])
