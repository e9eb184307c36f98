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
from bench.report import EXPERIMENTS, render_report


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("results")
    threads = torch.get_num_threads()  # `bench run --threads` sets it for the process: restore it after
    try:
        for name in EXPERIMENTS:
            work = tmp_path_factory.mktemp(f"work-{name}")
            args = ["run", name, "--smoke", "--seeds", "1", "--threads", "1", "--work", str(work)]
            assert main([*args, "--results", str(results)]) == 0
    finally:
        torch.set_num_threads(threads)
    return results


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_writes_a_result(smoke_results: Path, name: str) -> None:
    result = json.loads((smoke_results / f"{name}-smoke.json").read_text())
    assert result["smoke"] is True
    assert result["machine"]["cores"] >= 1
    assert result["wall_seconds"] >= 0
    assert "skipped" not in result, result.get("skipped")
    assert "failed" not in json.dumps(result.get("rows", [])), "a metagrad worker failed"


@pytest.mark.parametrize("name", ["sample-efficiency-ml100k", "sample-efficiency-ptb"])
def test_sample_efficiency_decides_its_claims_on_labelled_pairs(smoke_results: Path, name: str) -> None:
    result = json.loads((smoke_results / f"{name}-smoke.json").read_text())
    labels = {r["data"] for r in result["runs"]}
    assert result["comparisons"] and all({c["a"], c["b"]} <= labels for c in result["comparisons"])
    # Farzi against full, head and its own initialization: each claim with its interval and verdict
    assert len(result["claims"]) == 3
    assert all(c["lo"] <= c["value"] <= c["hi"] and isinstance(c["holds"], bool) for c in result["claims"])


def test_report_renders_every_section(smoke_results: Path, tmp_path: Path) -> None:
    # the report reads <name>.json; give it the smoke results under those names
    results = tmp_path / "results"
    results.mkdir()
    for name in EXPERIMENTS:
        (results / f"{name}.json").write_text((smoke_results / f"{name}-smoke.json").read_text())
    out = tmp_path / "REPORT.md"
    text = render_report(results, out)
    assert out.read_text() == text
    for _module, title in EXPERIMENTS.values():
        assert f"## {title}" in text
    assert "Not run yet" not in text
    assert "not run (no GPU)" in text  # the paper-protocol row, absent a GPU result
    assert list((tmp_path / "plots").glob("*.png"))


def test_paper_protocol_without_gpu_is_marked_not_run(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the paper protocol would really run")
    results = tmp_path / "results"
    args = ["run", "sample-efficiency-ml100k", "--protocol", "paper", "--threads", "1", "--work", str(tmp_path)]
    assert main([*args, "--results", str(results)]) == 0
    result = json.loads((results / "sample-efficiency-ml100k-paper.json").read_text())
    assert result["skipped"] == "not run (no GPU)"
