"""farzi.plan: projections from timed steps (the CLI side is tests/cli/test_plan_progress.py)."""

from __future__ import annotations

from pathlib import Path

from farzi.distill.engine import DistillConfig, distill
from farzi.plan import LONG_SECONDS, plan_distill, plan_student

TINY = {"d_model": 8, "n_layers": 1, "max_len": 16}


def _cfg(**kw) -> DistillConfig:
    base = dict(mu=4, xi=8, model="sasrec", model_overrides=TINY, objective="mm", inner_steps=1, real_batch=4)
    return DistillConfig(**{**base, **kw})


def test_a_resumed_distillation_projects_only_the_steps_left(tiny_rec, tmp_path: Path) -> None:
    out = tmp_path / "b.safetensors"
    cfg = _cfg(outer_steps=5)
    distill(tiny_rec, cfg, out, checkpoint_every=1, stop_after=2)  # a run stopped after 2 steps, its state saved
    state = out.with_suffix(".state.safetensors")
    saved = state.read_bytes()
    fresh = plan_distill(tiny_rec, cfg)
    resumed = plan_distill(tiny_rec, cfg, resume_from=out)
    fresh_outer, resumed_outer = (next(s for s in p.stages if s.unit == "outer step") for p in (fresh, resumed))
    assert fresh_outer.count == 5 and resumed_outer.count == 3
    assert state.read_bytes() == saved and not out.exists()  # the plan reads the state, writes nothing


def test_projection_grows_with_the_steps_and_names_levers_when_long(tiny_rec) -> None:
    from farzi.train import TrainConfig

    short = plan_student(tiny_rec, "sasrec", "random:20", TrainConfig(max_steps=10, batch_size=8), TINY)
    long = plan_student(tiny_rec, "sasrec", "random:20", TrainConfig(max_steps=10**8, batch_size=8), TINY)
    assert 0 < short.seconds < long.seconds and not short.long and long.long
    assert long.seconds > LONG_SECONDS
    steps = next(lv for lv in long.levers if lv.flag == "--max-steps")
    assert steps.suggested is not None and 1 <= steps.suggested < 10**8
    assert short.to_dict()["levers"] == []  # named only when the projection is long


def test_earliest_stop_by_hand() -> None:
    from farzi.plan import earliest_stop
    from farzi.train import TrainConfig

    # validations at steps 10, 20, ...: the first is the best so far, 15 more without improvement end it
    assert earliest_stop(TrainConfig(max_steps=600, eval_every=10, patience=15), 50) == (160, 16)
    assert earliest_stop(TrainConfig(max_steps=100, eval_every=10, patience=15), 50) == (100, 10)  # capped
    assert earliest_stop(TrainConfig(max_steps=600, eval_every=10, patience=0), 50) == (600, 60)  # never early
    # eval_every 0: once per epoch (4 steps of 128 over 500 sequences), at least every 10 steps
    assert earliest_stop(TrainConfig(max_steps=1000, batch_size=128, eval_every=0, patience=2), 500) == (30, 3)


def test_an_early_stopping_run_lies_between_the_least_and_the_projection(tiny_rec, tmp_path: Path) -> None:
    from farzi.plan import earliest_stop
    from farzi.student import train_student
    from farzi.train import TrainConfig

    cfg = TrainConfig(max_steps=400, batch_size=8, eval_every=2, patience=1, lr=1e-9)
    plan = plan_student(tiny_rec, "sasrec", "random:20", cfg, TINY)
    assert plan.least_seconds is not None and 0 < plan.least_seconds < plan.seconds
    assert any("at step 4 at the earliest" in n for n in plan.notes)
    result, _ = train_student(tiny_rec, "sasrec", "random:20", cfg, tmp_path / "s", TINY)
    assert result.stopped_early and earliest_stop(cfg, 20)[0] <= result.steps < cfg.max_steps
    never = plan_student(tiny_rec, "sasrec", "random:20", TrainConfig(max_steps=10, patience=0), TINY)
    assert never.least_seconds is None
