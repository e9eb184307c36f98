"""The variant-table runner: rows paired with every reference, carried rows, t intervals, the tables' settings."""

from __future__ import annotations

import copy
import json
import statistics

import pytest

from bench.__main__ import main
from bench.common import distill_config, settings, trajectories
from bench.experiments import ablations, levers, sample_efficiency
from bench.table import Table, Variant, _measure, carried, compare, reproduced, rows, student, t_interval
from farzi.models import make_config
from farzi.train import TrainConfig


def _run(name: str, seed: int, ranks: list[int], **extra) -> dict:
    return {"data": name, "seed": seed, "units": {"unit": "user", "rank": ranks}, **extra}


def test_rows_pair_every_variant_with_each_reference() -> None:
    runs = [  # hr@10 of init only 25, base 50, defaults 75, longer 100
        _run("init only", 0, [0, 20, 20, 20]),
        _run("base", 0, [0, 0, 20, 20]),
        _run("defaults", 0, [0, 0, 0, 20]),
        _run("longer", 0, [0, 0, 0, 0]),
    ]
    by = rows(runs, ["init only", "base", "defaults", "longer"], ("base", "init only", "defaults"), ("hr@10",), 50)
    longer = by["longer"]
    assert longer["hr@10"]["mean"] == 100.0 and longer["hr@10"]["method"] == "bootstrap"
    assert (longer["hr@10 - base"]["diff"], longer["hr@10 - init only"]["diff"]) == (50.0, 75.0)
    assert longer["hr@10 - defaults"]["diff"] == 25.0 and "hr@10 - defaults" not in by["defaults"]


def test_without_per_unit_figures_a_comparison_is_a_t_interval_over_the_seed_pairs() -> None:
    runs = [
        {"data": d, "seed": s, "test": {"hr@10": v}}
        for d, s, v in [("a", 0, 10.0), ("a", 1, 14.0), ("b", 0, 9.0), ("b", 1, 11.0), ("b", 2, 50.0)]
    ]
    c = compare(runs, "a", "b", "hr@10")
    assert c["method"] == "t" and c["pairs"] == 2 and c["diff"] == 2.0  # seed 2 has no partner
    assert c["lo"] == pytest.approx(2.0 - 12.7062 * 1.0) and c["hi"] == pytest.approx(2.0 + 12.7062 * 1.0)
    one = compare(runs[:1] + runs[2:3], "a", "b", "hr@10")
    assert one["diff"] == 1.0 and one["lo"] is None  # one pair: no interval
    xs = [1.0, 2.0, 4.0, 7.0, 11.0, 3.0, 5.0, 8.0, 2.0, 6.0, 9.0, 10.0, 1.0]
    m, lo, hi = t_interval(xs)  # 12 degrees of freedom: 2.1788
    assert hi - m == pytest.approx(2.1788 * statistics.stdev(xs) / len(xs) ** 0.5, rel=1e-3)


def _figures(name: str, mean: float) -> dict:
    return {"lever": name, "hr@10": {"mean": mean, "low": mean - 1, "high": mean + 1}}


def test_carried_rows_need_the_same_settings_and_seeds_and_skip_references() -> None:
    t = Table({n: Variant() for n in ("init only", "base", "longer", "wider")}, ("base", "init only"), ("hr@10",))
    s = {"distill": {"tau": 1.0}, "xi": 50}
    earlier = {"seeds": 3, "settings": {"xi": 50, "distill": {"tau": 1.0}}, "rows": [_figures("init only", 10)]}
    earlier["rows"] += [_figures("base", 20), _figures("longer", 30), _figures("gone", 5)]
    assert set(carried(t, earlier, s, 3)) == {"longer"}  # references and variants no longer listed: not carried
    assert carried(t, earlier, s, 5) == {} and carried(t, {**earlier, "smoke": True}, s, 3) == {}
    assert carried(t, earlier, {"xi": 50, "distill": {"tau": 2.0}}, 3) == {} and carried(t, None, s, 3) == {}
    now = {"init only": _figures("init only", 10), "base": _figures("base", 20)}
    assert reproduced(t, earlier, now) == []
    assert reproduced(t, earlier, {**now, "base": _figures("base", 20.5)}) == ["base"]
    assert reproduced(t, {"rows": earlier["rows"][1:]}, now) == ["init only"]  # the earlier run lacks it


def test_carry_on_an_experiment_without_rows_to_carry_exits_2(tmp_path, capsys) -> None:
    assert main(["run", "speedup", "--smoke", "--carry", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without --carry" in err
    (tmp_path / "fidelity-levers-ptb.json").write_text("[]")
    assert main(["run", "fidelity-levers-ptb", "--carry", "--results", str(tmp_path), "--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a result object" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fidelity-levers-ptb.json"]  # nothing written


def test_every_variant_of_every_table_is_a_valid_distillation_and_student_recipe() -> None:
    """A typo in a variant's settings fails here, not after an hour of the variants before it."""
    tables = [(levers.ML, levers.table_for("fidelity-levers")[1](False)), (levers.PTB, levers.ptb_settings(False))]
    tables += [ablations.SETUPS[name]("cpu", False)[::-1] for name in ablations.SETUPS]
    tables.append((sample_efficiency.table(settings("rec")), settings("rec")))
    for t, s in tables:
        for v in t.variants.values():
            if v.distill is not None:
                distill_config(s, 40, **{**t.base, **v.distill}).validate()
            train = {**s["trajectories"]["train"], **(v.omega or {}).get("train", {})}
            TrainConfig(**train).validate()
            changes = dict(v.student)
            model = {**s["model_overrides"], **changes.pop("model", {})}
            TrainConfig(**{**s["student"], **changes}).validate()
            make_config(v.model or s["model"], 100, **model)


def test_a_variant_sets_the_student_model_and_recipe_without_touching_the_settings(tiny_lm, tmp_path) -> None:
    s = settings("lm", smoke=True)
    s["student"] |= {"max_steps": 2, "eval_every": 1}
    before = copy.deepcopy(s)
    v = Variant(distill=None, data="head:4", student={"model": {"dropout": 0.35}, "weight_decay": 1e-3})
    run = student(Table({}, split="valid"), tiny_lm, s, v, "head:4", 0, tmp_path)
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["config"]["dropout"] == 0.35  # the settings' 0.1, changed by the variant
    assert saved["config"]["d_model"] == s["model_overrides"]["d_model"]  # the rest as the settings have it
    assert saved["train"]["weight_decay"] == 1e-3 and "tokens" in run["units"] and "test" not in run
    assert s == before and v.student == {"model": {"dropout": 0.35}, "weight_decay": 1e-3}


def test_a_variant_with_its_own_omega_distills_from_trajectories_trained_with_its_changes(tiny_lm, tmp_path) -> None:
    s = settings("lm", smoke=True)
    s["distill"]["outer_steps"] = 1
    s["student"] |= {"max_steps": 2, "eval_every": 1}
    before = copy.deepcopy(s)
    t = Table({"omega 9": Variant(omega={"train": {"max_steps": 9}})}, split="valid")
    shared = trajectories(tiny_lm, s, tmp_path)
    timings = dict.fromkeys(("trajectories", "distill", "students"), 0.0)
    result = _measure(t, tiny_lm, s, tmp_path, 4, 1, timings, "omega 9")
    own = [p for p in (tmp_path / "trajectories").iterdir() if p != shared]
    assert len(own) == 1 and len(result["runs"]) == 1 and result["bundles"][0]["distill_seed"] == 0
    steps = [c["step"] for c in json.loads((own[0] / "manifest.json").read_text())["checkpoints"]]
    assert max(steps) == 9  # the smoke settings' 6, changed by the variant
    assert max(c["step"] for c in json.loads((shared / "manifest.json").read_text())["checkpoints"]) == 6
    assert s == before
