"""The PTB full-data baseline's recipes: every recipe over the same seeds, paired with the preset's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.experiments.ablations import RECIPES, recipe_table
from bench.report import verdict


def test_each_recipe_is_trained_and_paired_with_the_preset(tmp_path: Path) -> None:
    args = ["run", "baseline-recipe-ptb", "--smoke", "--seeds", "2", "--threads", "1", "--work", str(tmp_path)]
    assert main([*args, "--results", str(tmp_path / "results")]) == 0
    result = json.loads((tmp_path / "results" / "baseline-recipe-ptb-smoke.json").read_text())
    assert [r["variant"] for r in result["rows"]] == list(RECIPES)
    preset, *others = result["rows"]
    assert "ppl_corpus - preset" not in preset and all(r["ppl_corpus - preset"]["pairs"] == 2 for r in others)
    for r in others:  # the paired difference is of the same figures the rows report
        d = r["ppl_corpus - preset"]
        assert abs(d["a"] - r["ppl_corpus"]["mean"]) < 1e-9 and abs(d["b"] - preset["ppl_corpus"]["mean"]) < 1e-9
    # the students kept their settings: a second run on the same work directory trains nothing again
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jobs").glob("*.json") if p.name != "settings.json"}
    assert len(kept) == len(RECIPES)
    assert main([*args, "--results", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "baseline-recipe-ptb-smoke.json").read_text())
    assert again["rows"] == result["rows"] and again["measured_here"] == []
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jobs").glob("*.json") if p.name in kept} == kept


def test_the_table_reads_rows_of_both_runners() -> None:
    d = {"diff": -1.25, "lo": -2.0, "hi": -0.5, "pairs": 3}
    old = {
        "recipe": "wd 1e-3",
        "what": "w",
        "mean": 89.0,
        "low": 87.0,
        "high": 91.0,
        "best_steps": [1],
        "vs reference": d,
    }
    new = {
        "variant": "wd 1e-3",
        "what": "w",
        "ppl_corpus": {"mean": 89.0, "low": 87.0, "high": 91.0},
        "best_steps": [1],
    }
    line = "| wd 1e-3 | w | 89.0 [87.0, 91.0] | -1.25 [-2.00, -0.50] | better | 1 |"
    assert recipe_table({"rows": [old]}).splitlines()[-1] == line
    assert recipe_table({"rows": [{**new, "ppl_corpus - preset": d}]}).splitlines()[-1] == line
    assert verdict({"lo": -2.0, "hi": -0.5}, True) == "better" and verdict({"lo": 0.1, "hi": 1}, True) == "worse"
    assert verdict({"lo": -1.0, "hi": 1.0}, True) == "not resolved" and verdict(None) == "—"


@pytest.mark.parametrize("name", ["baseline-recipe-ptb", "sample-efficiency-ptb"])
def test_a_protocol_the_experiment_lacks_is_one_line_and_exit_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    assert main(["run", name, "--protocol", "paper", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {name}: the paper protocol") and "--protocol cpu" in err[0]
    assert not results.exists()
