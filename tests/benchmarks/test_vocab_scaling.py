"""The vocab-scaling experiment at toy size: every cell measured or skipped with its reason, each ratio to the
full-data step positive and finite, and the sparse rows marked unavailable where ``DistillConfig`` has no support."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench.__main__ import main
from bench.experiments import vocab_scaling


def test_smoke_run_measures_every_cell_as_ratios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beauty = tmp_path / "Beauty.txt"  # Beauty's format, one user a line: `user item item ...` (40 items)
    beauty.write_text(
        "".join(f"{u} " + " ".join(str(1 + (3 * u + 7 * t) % 40) for t in range(12)) + "\n" for u in range(60))
    )
    monkeypatch.setattr(vocab_scaling, "BEAUTY", beauty)
    threads = torch.get_num_threads()  # `bench run --threads` sets it for the process: restore it after
    args = ["run", "vocab-scaling", "--smoke", "--threads", "1", "--support", "0,4", "--work", str(tmp_path / "work")]
    try:
        assert main([*args, "--results", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    r = json.loads((tmp_path / "vocab-scaling-smoke.json").read_text())
    s = r["settings"]
    assert s["support"] == [0, 4] and s["threads"] == 1 and "mu x xi target tokens" in s["denominator"]
    assert s["distill"]["objective"] == "mm" and r["machine"]["torch_threads"] == 1
    cells = [(x["data"], x["items"], x["support"]) for x in r["rows"]]
    data = [("synthetic-rec", 30), ("synthetic-rec", 60), ("amazon-beauty", None)]
    assert cells == [(d, v, k) for d, v in data for k in (0, 4)]
    for x in r["rows"]:
        if x["support"] and not s["support_available"]:
            assert x["skipped"].startswith("not available") and "ratios" not in x
            continue
        assert "skipped" not in x and "failed" not in x, x
        assert set(x["ratios"]) == {"init", "outer", "student"}
        assert all(math.isfinite(q) and q > 0 for q in x["ratios"].values()), x["ratios"]
        assert all(x[p]["seconds"] > 0 and x[p]["peak_rss_mib"] > 0 for p in vocab_scaling.PHASES)
        assert len(x["outer"]["every_step"]) == s["outer_steps"] and x["phase"] is None
    table = vocab_scaling.cell_table(r)
    assert "| synthetic-rec | 31 | dense |" in table and "| amazon-beauty |" in table and "| measured |" in table


def test_without_a_support_setting_the_sparse_rows_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Dense:  # a DistillConfig before `support` existed
        def to_dict(self) -> dict:
            return {"mu": 50}

    monkeypatch.setattr(vocab_scaling, "DistillConfig", Dense)
    monkeypatch.setattr(vocab_scaling, "_dataset", lambda items, s, work: {"data": "synthetic-rec", "path": ""})
    monkeypatch.setattr(vocab_scaling, "_cell", lambda row, s, work: row | {"ratios": {"outer": 2.0}})
    r = vocab_scaling.run("cpu", tmp_path, 1, smoke=True, support=[0, 8])
    assert r["settings"]["support_available"] is False and len(r["rows"]) == 6
    for x in r["rows"]:
        assert ("skipped" in x) == bool(x["support"]) and ("ratios" in x) == (not x["support"])
        assert not x["support"] or x["skipped"] == "not available: DistillConfig has no `support` setting yet"
    assert "not available" in vocab_scaling.cell_table(r)


def test_a_cell_past_its_time_limit_is_skipped_with_the_reason(tmp_path: Path) -> None:
    row = {"data": "synthetic-rec", "items": 30, "support": 0, "path": str(tmp_path)}
    got = vocab_scaling._cell(row, {"distill": {}, "limit_s": 0.2}, tmp_path)  # killed while it imports torch
    assert got["skipped"] == "over the 0.2 s limit per cell, cut off in its start-up phase" and got["ratios"] == {}
    assert "over the 0.2 s limit" in vocab_scaling.cell_table({"rows": [got]})
