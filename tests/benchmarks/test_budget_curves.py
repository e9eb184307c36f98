"""bench budget-curves: the ratio to the full data per budget, and the smallest budget reaching 90 / 95 % of it."""

from __future__ import annotations

from bench.experiments.budget_curves import budget_to, curve_table, half_of_random, reach_table


def _run(data: str, hits: int, users: int = 100, seed: int = 0) -> dict:
    rank = [0] * hits + [50] * (users - hits)  # HR@10 = hits %
    units = {"unit": "user", "rank": rank, "auc": [0.5] * users, "nll": [1.0] * users}
    units |= {"xent_sum": [1.0] * users, "xent_count": [1] * users, "top10_all": [0] * users}
    dseed = 0 if data.startswith(("farzi", "init")) else None
    return {"data": data, "seed": seed, "distill_seed": dseed, "units": units, "test": {"hr@10": float(hits)}}


def _result(curves: dict[str, dict[int, int]], full: int = 50) -> dict:
    runs = [_run("full", full)]
    for kind, by_budget in curves.items():
        for mu, hits in by_budget.items():
            runs.append(_run(f"{kind} {mu}x5" if kind in ("farzi", "init only") else f"{kind}:{mu}", hits))
    s = {"budgets": [10, 20, 40], "xi": 5, "metrics": ["hr@10"], "n_boot": 200}
    return {"settings": s, "runs": runs}


CURVES = {
    "farzi": {10: 40, 20: 46, 40: 48},  # ratios 0.80, 0.92, 0.96
    "init only": {10: 30, 20: 40, 40: 45},  # 0.60, 0.80, 0.90
    "random": {10: 20, 20: 30, 40: 46},  # 0.40, 0.60, 0.92
    "head": {10: 10, 20: 20, 40: 30},
}


def test_the_smallest_budget_reaching_each_mark() -> None:
    found = budget_to(_result(CURVES))
    assert {k: {m: (x[0] if x else None) for m, x in v.items()} for k, v in found.items()} == {
        "farzi": {0.9: 20, 0.95: 40},
        "init only": {0.9: 40, 0.95: None},
        "random": {0.9: 40, 0.95: None},
        "head": {0.9: None, 0.95: None},
    }
    assert found["farzi"][0.9][1]["ratio"] == 46 / 50


def test_the_tables_and_the_claim_say_what_was_measured() -> None:
    r = _result(CURVES)
    assert "| 20 | 0.920 [" in curve_table(r)
    table = reach_table(r)
    assert "| farzi | 20 (0.920 [" in table and "| head | not reached up to 40 | not reached up to 40 |" in table
    assert half_of_random(r) == "holds: Farzi Data at 20, random sampling at 40"
    slow = _result({**CURVES, "farzi": {10: 30, 20: 46, 40: 48}, "random": {10: 20, 20: 46, 40: 48}})
    assert half_of_random(slow) == "does **not** hold: Farzi Data at 20, random sampling at 20"
    never = _result({**CURVES, "farzi": {10: 10, 20: 10, 40: 10}})
    assert half_of_random(never) == "does **not** hold: Farzi Data does not reach 90 % of full up to 40"
