"""Replayed early stopping and the paired comparison of validation signals (issue 9)."""

from __future__ import annotations

from bench.experiments.student_selection import replay, versus_default


def _point(step: int, test: float, xent: float, hr: float) -> dict[str, float]:
    return {
        "step": step,
        "test hr@10": test,
        "valid xent": xent,
        "valid nll": xent,
        "valid hr@10": hr,
        "valid hr_all@10": hr,
    }


def test_replay_keeps_the_best_state_until_patience_runs_out() -> None:
    points = [
        _point(10, 1.0, 5.0, 1.0),
        _point(20, 2.0, 4.0, 3.0),
        _point(30, 3.0, 4.5, 2.0),
        _point(40, 9.0, 3.0, 1.0),
    ]
    assert replay(points, "xent", patience=0) == {"step": 40, "test hr@10": 9.0}
    assert replay(points, "xent", patience=1) == {"step": 20, "test hr@10": 2.0}  # stops at step 30
    assert replay(points, "hr@10", patience=0) == {"step": 20, "test hr@10": 2.0}


def test_versus_default_pairs_runs_and_is_exact_when_every_run_agrees() -> None:
    # xent keeps step 40 (test 9), hr@10 keeps step 20 (test 2): -7 in each of the two runs
    run = [_point(10, 1.0, 5.0, 1.0), _point(20, 2.0, 4.0, 3.0), _point(40, 9.0, 3.0, 1.0)]
    result = {"patience": 0, "runs": [{"points": run}, {"points": run}]}
    rows = {r["metric"]: r for r in versus_default(result, n_boot=100)}
    assert "xent" not in rows  # the default itself
    assert rows["hr@10"] == {"metric": "hr@10", "diff": -7.0, "lo": -7.0, "hi": -7.0, "runs": 2}
    assert rows["nll"]["diff"] == 0.0
