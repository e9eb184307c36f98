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
