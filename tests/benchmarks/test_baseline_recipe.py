"""The PTB full-data baseline's recipes: every recipe over the same seeds, paired with the preset's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.experiments.baseline_recipe import RECIPES, render, verdict


def test_each_recipe_is_trained_and_paired_with_the_preset(tmp_path: Path) -> None:
    args = ["run", "baseline-recipe-ptb", "--smoke", "--seeds", "2", "--threads", "1", "--work", str(tmp_path)]
    assert main([*args, "--results", str(tmp_path / "results")]) == 0
    result = json.loads((tmp_path / "results" / "baseline-recipe-ptb-smoke.json").read_text())
    assert [r["recipe"] for r in result["rows"]] == list(RECIPES) and result["reference"] == "preset"
    preset, *others = result["rows"]
    assert "vs reference" not in preset and all(r["vs reference"]["pairs"] == 2 for r in others)
    for r in others:  # the paired difference is of the same figures the rows report
        assert abs(r["vs reference"]["a"] - r["mean"]) < 1e-9 and abs(r["vs reference"]["b"] - preset["mean"]) < 1e-9
    # the students kept their settings: a second run on the same work directory trains nothing again
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jobs").glob("*-s*.json")}
    assert len(kept) == 2 * len(RECIPES)
    assert main([*args, "--results", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "baseline-recipe-ptb-smoke.json").read_text())
    assert again["rows"] == result["rows"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jobs").glob("*-s*.json")} == kept


def test_the_conclusion_follows_the_paired_intervals() -> None:
    def result(lo: float, hi: float) -> dict:
        d = {"diff": (lo + hi) / 2, "lo": lo, "hi": hi}
        rows = [
            {"recipe": "preset", "what": "", "mean": 90.0, "low": 88.0, "high": 92.0, "best_steps": [1]},
            {"recipe": "wd 1e-3", "what": "", "mean": 89.0, "low": 87.0, "high": 91.0, "best_steps": [1]},
        ]
        rows[1]["vs reference"] = d
        return {"rows": rows, "reference": "preset", "seeds": 1, "sentences": 3, "settings": {}, "metric": "ppl"}

    assert verdict({"lo": -2.0, "hi": -0.5}) == "better" and verdict({"lo": 0.1, "hi": 1}) == "worse"
    assert verdict({"lo": -1.0, "hi": 1.0}) == "not resolved" and verdict(None) == "—"
    assert "Better than the preset recipe on validation: wd 1e-3" in render("x", result(-2.0, -0.5), Path("."))
    assert "No recipe is better than the preset one" in render("x", result(-1.0, 1.0), Path("."))


@pytest.mark.parametrize("name", ["baseline-recipe-ptb", "sample-efficiency-ptb"])
def test_a_protocol_the_experiment_lacks_is_one_line_and_exit_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    assert main(["run", name, "--protocol", "paper", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {name}: the paper protocol") and "--protocol cpu" in err[0]
    assert not results.exists()
