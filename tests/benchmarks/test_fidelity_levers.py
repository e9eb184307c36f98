"""The lever table's pairings: every row against base, init only and today's defaults."""

from __future__ import annotations

from bench.experiments.fidelity_levers import ML, LeverSet, _row


def _lever(name: str, ranks: list[int]) -> dict:
    units = [{"unit": "user", "rank": ranks}]  # one student seed; rank of each user's target
    return {"lever": name, "what": "", "distill_seconds": 0.0, "kept_step": None, "units": units}


def test_rows_pair_with_the_defaults_lever_where_it_is_not_base() -> None:
    ls = LeverSet({}, {}, ("hr@10",), (), ML.settings, ML.budget, defaults="omega + normalize")
    assert ls.references() == ("base", "init only", "omega + normalize")
    done = {
        "init only": _lever("init only", [0, 20, 20, 20]),  # hr@10: 25
        "base": _lever("base", [0, 0, 20, 20]),  # 50
        "omega + normalize": _lever("omega + normalize", [0, 0, 0, 20]),  # 75
        "longer": _lever("longer", [0, 0, 0, 0]),  # 100
    }
    ls = LeverSet({n: ("", {}, {}) for n in done}, {}, ("hr@10",), (), ML.settings, ML.budget, "omega + normalize")
    row = _row(ls, done, "longer", n_boot=50)
    assert row["hr@10"]["mean"] == 100.0
    assert row["hr@10 - base"]["diff"] == 50.0
    assert row["hr@10 - init only"]["diff"] == 75.0
    assert row["hr@10 - omega + normalize"]["diff"] == 25.0
    assert "hr@10 - omega + normalize" not in _row(ls, done, "omega + normalize", n_boot=50)


def test_a_set_whose_defaults_are_base_pairs_twice() -> None:
    ls = LeverSet({}, {}, ("hr@10",), (), ML.settings, ML.budget)
    assert ls.references() == ("base", "init only")
