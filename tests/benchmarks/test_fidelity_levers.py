"""The lever table's pairings: every row against base, init only and today's defaults."""

from __future__ import annotations

import copy
import json

from bench.__main__ import main
from bench.experiments import _ml
from bench.experiments.fidelity_levers import (
    DEFAULTS,
    ML,
    LeverSet,
    _measure,
    _recipe_note,
    _row,
    _students,
    carried_rows,
    distill_config,
    omega_settings,
    reproduced,
    shared_note,
    student_setup,
)
from bench.experiments.fidelity_levers_ptb import PTB
from bench.experiments.sample_efficiency import SETTINGS
from farzi.models import make_config
from farzi.train import TrainConfig


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


def _set(names: list[str]) -> LeverSet:
    return LeverSet({n: ("", {}, {}) for n in names}, {}, ("hr@10",), (), ML.settings, ML.budget)


def _figures(lever: str, mean: float) -> dict:
    return {"lever": lever, "hr@10": {"mean": mean, "low": mean - 1, "high": mean + 1}}


def test_carried_rows_need_the_same_settings_and_seeds_and_skip_references() -> None:
    ls = _set(["init only", "base", "longer", "wider"])
    earlier = {
        "seeds": 3,
        "settings": {"xi": 50, "distill": {"tau": 1.0}},
        "rows": [_figures("init only", 10), _figures("base", 20), _figures("longer", 30), _figures("gone", 5)],
    }
    s = {"distill": {"tau": 1.0}, "xi": 50}  # key order does not matter
    assert set(carried_rows(ls, earlier, s, 3)) == {"longer"}  # references and levers no longer listed: not carried
    assert carried_rows(ls, earlier, s, 5) == {}
    assert carried_rows(ls, earlier, {"xi": 50, "distill": {"tau": 2.0}}, 3) == {}
    assert carried_rows(ls, {**earlier, "smoke": True}, s, 3) == {}
    assert carried_rows(ls, None, s, 3) == {}


def test_reproduced_names_the_references_whose_figures_moved() -> None:
    ls = _set(["init only", "base", "longer"])
    earlier = {"rows": [_figures("init only", 10), _figures("base", 20), _figures("longer", 30)]}
    now = {"init only": _figures("init only", 10), "base": _figures("base", 20)}
    assert reproduced(ls, earlier, now) == []
    assert reproduced(ls, earlier, {**now, "base": _figures("base", 20.5)}) == ["base"]
    assert reproduced(ls, {"rows": earlier["rows"][1:]}, now) == ["init only"]  # the earlier run lacks it


def test_carry_on_an_experiment_without_levers_exits_2(tmp_path, capsys) -> None:
    assert main(["run", "speedup", "--smoke", "--carry", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without --carry" in err


def test_the_note_on_carried_rows_says_whether_the_references_reproduced() -> None:
    rows = [_figures("base", 21.0), {**_figures("longer", 30.0), "carried_from": "2026-12-01T00:00:00Z"}]
    result = {
        "rows": rows,
        "measured_here": ["base"],
        "carried": ["longer"],
        "references_then": {"base": {"hr@10": _figures("base", 20.0)["hr@10"]}},
        "references_moved": ["base"],
        "metric": "hr@10",
    }
    text = " ".join(shared_note(result))
    assert "finished 2026-12-01T00:00:00Z" in text and ": longer." in text
    assert "do **not** reproduce" in text and "base 20.000 then, 21.000 now" in text
    assert "reproduce that run's figures." in " ".join(shared_note({**result, "references_moved": []}))
    on = {**result, "carried_machine": "AMD EPYC", "machine": {"cpu": "Intel Xeon"}}
    assert "now; that run on AMD EPYC, this one on Intel Xeon)" in " ".join(shared_note(on))
    assert "measured 0 of the 1 levers" in " ".join(shared_note({**result, "measured_here": []}))


def test_carry_from_a_result_file_that_is_not_one_exits_2(tmp_path, capsys) -> None:
    (tmp_path / "fidelity-levers-ptb.json").write_text("[]")
    assert main(["run", "fidelity-levers-ptb", "--carry", "--results", str(tmp_path), "--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a result object" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fidelity-levers-ptb.json"]  # nothing written


def test_a_lever_sets_the_student_model_and_recipe_without_touching_the_settings(tiny_lm, tmp_path) -> None:
    s = copy.deepcopy(SETTINGS["smoke-lm"])
    s["student"] = {**s["student"], "max_steps": 2, "eval_every": 1, "patience": 0}
    before = copy.deepcopy(s)
    change = {"model": {"dropout": 0.35}, "weight_decay": 1e-3}
    units = _students(tiny_lm, s, "head:4", 1, change, tmp_path)
    saved = json.loads((tmp_path / "s0" / "model.json").read_text())
    assert saved["config"]["dropout"] == 0.35  # the settings' 0.1, changed by the lever
    assert saved["config"]["d_model"] == s["model_overrides"]["d_model"]  # the rest as the settings have it
    assert saved["train"]["weight_decay"] == 1e-3
    assert len(units) == 1 and s == before and change == {"model": {"dropout": 0.35}, "weight_decay": 1e-3}


def test_every_lever_of_both_sets_is_a_valid_distillation_and_student_recipe() -> None:
    """A typo in a lever's settings fails here, not after an hour of the levers before it."""
    for ls in (ML, PTB):
        s = ls.settings(False)
        assert set(ls.omega) <= set(ls.levers)
        for name, (_, distill, student) in ls.levers.items():
            distill_config(ls, s, 40, distill).validate()
            TrainConfig(**omega_settings(ls, s, name)["trajectories"]["train"]).validate()
            train, model = student_setup(s, student)
            train.validate()
            make_config(s["model"], 100, **model)


def test_an_omega_lever_distills_from_trajectories_trained_with_its_changes(tiny_lm, tmp_path) -> None:
    s = copy.deepcopy(SETTINGS["smoke-lm"])
    s["distill"] = {**s["distill"], "outer_steps": 1}
    s["student"] = {**s["student"], "max_steps": 2, "eval_every": 1, "patience": 0}
    before = copy.deepcopy(s)
    omega = {"omega 9": {"max_steps": 9}}
    ls = LeverSet({"omega 9": ("", {}, {})}, {}, ("ppl_corpus",), (), lambda smoke: s, lambda smoke: 4, omega=omega)
    assert omega_settings(ls, s, "base") is s
    shared = _ml.omega(tiny_lm, s, tmp_path, s["model"], s["model_overrides"])
    (tmp_path / "bundles").mkdir()
    row = _measure(ls, tiny_lm, s, tmp_path, shared, 4, "omega 9", 1)
    own = tmp_path / "trajectories" / row["trajectories"]
    assert row["omega"] == {"max_steps": 9} and own != shared
    steps = [c["step"] for c in json.loads((own / "manifest.json").read_text())["checkpoints"]]
    assert max(steps) == 9  # the smoke settings' 6, changed by the lever
    assert max(c["step"] for c in json.loads((shared / "manifest.json").read_text())["checkpoints"]) == 6
    assert s == before and len(row["units"]) == 1


def test_the_recipe_note_reads_the_student_levers_on_the_defaults_bundle() -> None:
    def row(name: str, distill: dict, student: dict, lo: float, hi: float) -> dict:
        d = {"diff": (lo + hi) / 2, "lo": lo, "hi": hi}
        return {"lever": name, "distill": distill, "student": student, "xent - omega + normalize": d}

    rows = [
        row("recipe lr 5e-4", {}, {"lr": 5e-4}, -0.2, -0.1),  # base's bundle: not one of these
        row("wd", DEFAULTS, {"weight_decay": 1e-3}, 0.01, 0.03),
        row("dropout", DEFAULTS, {"model": {"dropout": 0.35}}, -0.01, 0.02),
    ]
    (blank, text) = _recipe_note(rows)
    assert blank == "" and "recipe lr 5e-4" not in text
    assert "wd 0.020 [0.010, 0.030] (worse" in text and "dropout 0.005 [-0.010, 0.020] (not resolved" in text
    assert "None is better" in text
    rows[2]["xent - omega + normalize"] = {"diff": -0.02, "lo": -0.03, "hi": -0.01}
    assert "Better: dropout; a recipe changes only after a paired run" in _recipe_note(rows)[1]
    assert _recipe_note(rows[:1]) == []
