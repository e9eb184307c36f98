"""`python -m bench pair`: one kind of data across two sample-efficiency results, paired by seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.experiments.sample_efficiency import pair_results


def _result(ranks_by_seed: dict[int, list[int]]) -> dict:
    runs = [
        {"data": "farzi 4x8", "seed": s, "distill_seed": 0, "units": {"unit": "user", "rank": r}}
        for s, r in ranks_by_seed.items()
    ]
    runs.append({"data": "full", "seed": 0, "units": {"unit": "user", "rank": [50, 50]}})
    return {"runs": runs, "settings": {"metrics": ["hr@10"]}}


def test_pairs_by_seed_and_ignores_unmatched_runs() -> None:
    a = _result({0: [0, 0], 1: [0, 20], 2: [0, 0]})  # hr@10 100, 50 (seed 2 has no partner)
    b = _result({0: [0, 20], 1: [20, 20]})  # 50, 0
    (row,) = pair_results(a, b, "farzi 4x8", ["hr@10"], n_boot=200)
    assert (row["a"], row["b"], row["diff"], row["pairs"]) == (75.0, 25.0, 50.0, 2)
    assert row["lo"] <= 50.0 <= row["hi"]
    misses, hits = _result({0: [20, 20], 1: [20, 20]}), _result({0: [0, 0], 1: [0, 0]})
    (exact,) = pair_results(misses, hits, "farzi 4x8", ["hr@10"], n_boot=200)
    assert exact["lo"] == exact["diff"] == exact["hi"] == -100.0  # no resample of seeds or users moves it


def test_the_command_prints_a_table_and_exits_2_on_an_unknown_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for name, ranks in (("a", {0: [20, 20]}), ("b", {0: [0, 0]})):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_result(ranks)))
    assert main(["pair", *map(str, paths), "--data", "farzi 4x8", "--metric", "hr@10"]) == 0
    assert "| hr@10 | 0.000 | 100.000 | -100.000 [-100.000, -100.000] |" in capsys.readouterr().out
    assert main(["pair", *map(str, paths), "--data", "farzi 9x9"]) == 2
    assert "name a label both have" in capsys.readouterr().err
