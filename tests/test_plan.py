"""farzi.plan: projections from timed steps (the CLI side is tests/cli/test_plan_progress.py)."""

from __future__ import annotations

from pathlib import Path

from farzi.distill.engine import Distillation, DistillConfig
from farzi.plan import LONG_SECONDS, plan_distill, plan_student

TINY = {"d_model": 8, "n_layers": 1, "max_len": 16}


def _cfg(**kw) -> DistillConfig:
    base = dict(mu=4, xi=8, model="sasrec", model_overrides=TINY, objective="mm", inner_steps=1, real_batch=4)
    return DistillConfig.from_dict({**base, **kw})


def test_a_resumed_distillation_projects_only_the_steps_left(tiny_rec, tmp_path: Path) -> None:
    out = tmp_path / "b.safetensors"
    cfg = _cfg(outer_steps=5)
    Distillation(tiny_rec, cfg, out, checkpoint_every=1).run(until=2)  # a run stopped after 2 steps, its state saved
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


def test_the_step_time_is_the_median_so_one_slow_step_does_not_set_it(monkeypatch) -> None:
    from farzi import plan

    times = iter([1.0, 100.0, 2.0, 3.0, 4.0, 5.0])  # one step slowed 50x by other work
    calls: list[int] = []

    def step(k: int) -> float:
        calls.append(k)
        return next(times)

    # cheap steps against a long run: timed until `most` (no wall-clock target is reached)
    assert plan._timed_steps(step, 3, lambda t: 1e9, most=5) == 3.0  # median of 1, 100, 2, 3, 4
    assert calls == [0, 1, 2, 3, 4]
    # a run this short is worth only probe_steps timed steps (2 % of a run of ~0 s)
    calls.clear()
    times = iter([7.0, 1.0, 9.0, 0.0])
    assert plan._timed_steps(step, 3, lambda t: 0.0, most=25) == 7.0 and calls == [0, 1, 2]


def test_a_plan_timed_on_a_busy_machine_says_so(tiny_rec, monkeypatch) -> None:
    from farzi import plan
    from farzi.train import TrainConfig

    # without a CPU pressure counter: by the load average against the cores
    assert plan.busy_note(None, 2, 2) is None and plan.busy_note(2.4, 2, 2) is None
    note = plan.busy_note(4.13, 2, 2)
    assert note is not None and "load 4.1 on 2 cores" in note and "--threads 1" in note
    single = plan.busy_note(4.13, 2, 1)
    assert single is not None and "--threads" not in single  # one thread already: nothing to lower
    # with one: by the share of the probe during which work waited for a CPU (the load does not decide)
    assert plan.busy_note(9.0, 2, 2, cpu_wait=0.05) is None
    waited = plan.busy_note(0.5, 2, 2, cpu_wait=0.5)
    assert waited is not None and "waited for a CPU 50 % of the time, load 0.5 on 2 cores" in waited

    monkeypatch.setattr(plan.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(plan, "cpu_stall_seconds", lambda: None)
    monkeypatch.setattr(plan.os, "getloadavg", lambda: (64.0, 1.0, 1.0))
    busy = plan_student(tiny_rec, "sasrec", "random:20", TrainConfig(max_steps=10, batch_size=8), TINY)
    assert busy.load == 64.0 and busy.to_dict()["load"] == 64.0 and busy.cpu_wait is None
    assert any("busy while timing (load 64.0 on 2 cores)" in n for n in busy.notes)
    monkeypatch.setattr(plan.os, "getloadavg", lambda: (0.5, 1.0, 1.0))
    quiet = plan_student(tiny_rec, "sasrec", "random:20", TrainConfig(max_steps=10, batch_size=8), TINY)
    assert not any("busy" in n for n in quiet.notes)
    # a stall counter that grows by 1000 s over the probe: work waited all the time
    counter = iter([0.0, 1000.0])
    monkeypatch.setattr(plan, "cpu_stall_seconds", lambda: next(counter))
    stalled = plan_student(tiny_rec, "sasrec", "random:20", TrainConfig(max_steps=10, batch_size=8), TINY)
    assert stalled.cpu_wait is not None and stalled.cpu_wait > 1 and "cpu_wait" in stalled.to_dict()
    assert any("waited for a CPU 100 % of the time" in n for n in stalled.notes)


def test_the_cpu_pressure_counter_is_read_where_linux_has_one(tmp_path: Path, monkeypatch) -> None:
    from farzi import plan

    fake = tmp_path / "cpu"
    fake.write_text("some avg10=6.66 avg60=8.53 avg300=4.23 total=9559510254\nfull avg10=0.00 total=0\n")
    monkeypatch.setattr(plan, "CPU_PRESSURE", fake)
    assert plan.cpu_stall_seconds() == 9559.510254
    monkeypatch.setattr(plan, "CPU_PRESSURE", tmp_path / "missing")
    assert plan.cpu_stall_seconds() is None
