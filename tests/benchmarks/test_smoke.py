"""Every benchmark experiment runs end to end at toy size, and the report renders from its results.

The real runs (``python -m bench run EXPERIMENT``) take minutes to an hour each and are not part of the test
suite; these smoke runs use the synthetic datasets, so they need neither ``../shared`` nor a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.__main__ import main
from bench.common import BENCH
from bench.experiments.sample_efficiency import claims, comparisons
from bench.report import EXPERIMENTS, render_report


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("results")
    threads = torch.get_num_threads()  # `bench run --threads` sets it for the process: restore it after
    try:
        for name in EXPERIMENTS:
            work = tmp_path_factory.mktemp(f"work-{name}")
            args = ["run", name, "--smoke", "--seeds", "2", "--threads", "1", "--work", str(work)]
            assert main([*args, "--results", str(results)]) == 0
    finally:
        torch.set_num_threads(threads)
    return results


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_writes_a_result(smoke_results: Path, name: str) -> None:
    result = json.loads((smoke_results / f"{name}-smoke.json").read_text())
    assert result["smoke"] is True and result["seeds"] == 2
    assert result["machine"]["cores"] >= 1 and result["wall_seconds"] >= 0
    assert "skipped" not in result, result.get("skipped")
    assert "failed" not in json.dumps(result.get("rows", [])), "a metagrad worker failed"
    for x in result.get("runs", []):  # every seed asked for ran (no silent cap)
        same = [y for y in result["runs"] if y["data"] == x["data"] and y.get("distill_seed") == x.get("distill_seed")]
        assert len(same) == 2


@pytest.mark.parametrize("name", ["sample-efficiency-ml100k", "sample-efficiency-ptb"])
def test_sample_efficiency_decides_its_claims_on_labelled_pairs(smoke_results: Path, name: str) -> None:
    result = json.loads((smoke_results / f"{name}-smoke.json").read_text())
    labels = {r["data"] for r in result["runs"]}
    comps = comparisons(result["settings"], result["runs"])
    assert len(comps) == 5 and all({c["a"], c["b"]} <= labels and c["pairs"] >= 2 for c in comps)
    found = claims(result["settings"], comps)  # Farzi against full, head and its own initialization
    assert len(found) == 3 and all(c["lo"] <= c["value"] <= c["hi"] and isinstance(c["holds"], bool) for c in found)


def test_lever_rows_are_paired_with_every_reference(smoke_results: Path) -> None:
    result = json.loads((smoke_results / "fidelity-levers-smoke.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["init only", "base", "meta-batch 4, 25 steps", "recipe lr 5e-4"]
    assert "xent - base" not in rows["base"] and rows["base"]["xent - init only"]["pairs"] == 2
    assert rows["recipe lr 5e-4"]["distill_seconds"] < 1  # base's bundle, reused
    assert abs(rows["init only"]["xent - base"]["diff"] + rows["base"]["xent - init only"]["diff"]) < 1e-9


def test_report_renders_every_section(smoke_results: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"  # the report reads <name>.json: the smoke results under those names
    results.mkdir()
    for name in EXPERIMENTS:
        (results / f"{name}.json").write_text((smoke_results / f"{name}-smoke.json").read_text())
    text = render_report(results, tmp_path / "REPORT.md", (BENCH / "REPORT.md").read_text())
    assert "Not run yet" not in text
    for name in EXPERIMENTS:
        assert f"`python -m bench run {name} --protocol cpu --seeds 2`" in text
    for table in ("| data | runs |", "| lever | what |", "| recipe | what |", "| variant | seeds |", "| decile |"):
        assert table in text
    assert "| student | data | seeds |" in text and "| comparison | per seed |" in text
    assert "| strategy | T | seconds |" in text and "| ratio | per repeat |" in text
    assert "not run (no GPU)" in text  # the paper-protocol row, absent a GPU result
    # one per sample-efficiency and budget-curve section, two for privacy, and the ablations' (11 in all)
    assert len(list((tmp_path / "plots").glob("*.png"))) == 11


def test_paper_protocol_without_gpu_is_marked_not_run(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the paper protocol would really run")
    results = tmp_path / "results"
    args = ["run", "sample-efficiency-ml100k", "--protocol", "paper", "--threads", "1", "--work", str(tmp_path)]
    assert main([*args, "--results", str(results)]) == 0
    result = json.loads((results / "sample-efficiency-ml100k-paper.json").read_text())
    assert result["skipped"] == "not run (no GPU)"
