"""The outer loop: budgets, objectives, the non-finite guard, and bitwise resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from farzi.distill import engine, objectives
from farzi.distill.engine import Distillation, DistillConfig, distill, parse_budget
from farzi.errors import ConfigError
from farzi.train import TrainConfig
from farzi.trajectories import train_trajectories

TINY_MODEL = {"d_model": 8, "n_layers": 1, "n_heads": 2, "max_len": 16}


def _cfg(**kw) -> DistillConfig:
    base = dict(
        mu=4,
        xi=8,
        latent_dim=4,
        inner_steps=3,
        outer_steps=4,
        real_batch=8,
        model="transformer",
        model_overrides=TINY_MODEL,
        seed=3,
    )
    base.update(kw)
    return DistillConfig.from_dict(base)


@pytest.mark.parametrize(("text", "want"), [("400x50", (400, 50)), ("50X50", (50, 50)), ("3*2", (3, 2))])
def test_parse_budget(text: str, want: tuple[int, int]) -> None:
    assert parse_budget(text) == want


@pytest.mark.parametrize("text", ["50by50", "50x", "x50", "0x50", "5x1", "-1x5", "5x5x5", ""])
def test_parse_budget_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(text)


def test_budget_larger_than_the_dataset(tiny_lm, tmp_path) -> None:
    with pytest.raises(ConfigError, match="exceeds the"):
        distill(tiny_lm, _cfg(mu=10_000), tmp_path / "b.safetensors")
    longest = int(tiny_lm.train.lengths.max())
    with pytest.raises(ConfigError, match="longest"):
        distill(tiny_lm, _cfg(xi=longest + 1), tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()


def test_distill_writes_a_bundle_and_a_log(tiny_lm, tmp_path) -> None:
    result = distill(tiny_lm, _cfg(), tmp_path / "b.safetensors")
    assert result.bundle.latent.shape == (4, 8, 4)
    assert result.bundle.decoder.shape == (4, tiny_lm.vocab_size)
    lines = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert all(math.isfinite(x["meta_loss"]) and not x["skipped"] for x in lines)
    # no trajectories: the teacher init falls back to real windows, inside sentences >= 8 tokens long
    # (they hold 88 % of tiny_lm's training tokens)
    assert result.bundle.meta["history"]["init"] == {"init": "real", "windows": "within"}


def test_resume_after_a_kill_ends_bitwise_identical(tiny_lm, tmp_path, monkeypatch) -> None:
    """A run killed after step 3 (state saved at step 2) and resumed equals an uninterrupted run."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cfg = _cfg(outer_steps=5)
    whole = distill(tiny_lm, cfg, tmp_path / "whole.safetensors")
    killed = tmp_path / "killed.safetensors"
    Distillation(tiny_lm, cfg, killed, checkpoint_every=2).run(until=3)
    assert killed.with_suffix(".state.safetensors").is_file() and not killed.exists()
    resumed = distill(tiny_lm, cfg, killed, checkpoint_every=2, resume=True)
    assert torch.equal(resumed.bundle.latent, whole.bundle.latent)
    assert torch.equal(resumed.bundle.decoder, whole.bundle.decoder)
    # the bundles differ only in their name-bearing metadata: none; the bytes are equal
    assert killed.read_bytes() == (tmp_path / "whole.safetensors").read_bytes()
    drop = ("step_seconds", "seconds")
    log_a = [{k: v for k, v in json.loads(x).items() if k not in drop} for x in whole.log_path.read_text().splitlines()]
    log_b = [
        {k: v for k, v in json.loads(x).items() if k not in drop} for x in resumed.log_path.read_text().splitlines()
    ]
    assert log_a == log_b
    assert not killed.with_suffix(".state.safetensors").exists()


def test_resume_refuses_other_settings(tiny_lm, tmp_path) -> None:
    out = tmp_path / "b.safetensors"
    Distillation(tiny_lm, _cfg(), out, checkpoint_every=1).run(until=2)
    with pytest.raises(ConfigError, match="other settings"):
        distill(tiny_lm, _cfg(tau=2.0), out, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        distill(tiny_lm, _cfg(), tmp_path / "other.safetensors", resume=True)


def test_non_finite_meta_gradient_skips_the_step(tiny_lm, tmp_path, monkeypatch) -> None:
    real = objectives.meta_gradient
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.grads = [torch.full_like(g, float("nan")) for g in out.grads]
        return out

    monkeypatch.setattr(objectives, "meta_gradient", flaky)
    result = distill(tiny_lm, _cfg(), tmp_path / "b.safetensors")
    lines = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert [x["skipped"] for x in lines] == [False, True, False, False]
    assert result.skipped == 1
    assert torch.isfinite(result.bundle.latent).all()


@pytest.fixture(scope="module")
def tiny_omega(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("omega") / "traj"
    train_trajectories(
        tiny_lm,
        "transformer",
        runs=2,
        every=2,
        config=TrainConfig(max_steps=6, batch_size=16, patience=0),
        out=out,
        model_overrides=TINY_MODEL,
    )
    return out


@pytest.mark.parametrize("objective", ["farzi", "mm", "dc", "mtt"])
@pytest.mark.parametrize("inner", ["adam", "sgd"])
def test_objectives_run(tiny_lm, tiny_omega, tmp_path, objective: str, inner: str) -> None:
    cfg = _cfg(objective=objective, inner_optimizer=inner, outer_steps=2, mtt_offset=1)
    result = distill(tiny_lm, cfg, tmp_path / "b.safetensors", trajectories=tiny_omega)
    lines = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert len(lines) == 2 and all(math.isfinite(x["meta_loss"]) for x in lines)
    if objective in ("farzi", "dc", "mtt"):
        assert all(x["checkpoint"] is not None for x in lines)
    assert result.bundle.meta["teacher"]["checkpoints"] == 8  # 2 runs x steps 0, 2, 4, 6


def test_trajectory_objectives_need_trajectories(tiny_lm, tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs --trajectories"):
        distill(tiny_lm, _cfg(objective="mtt"), tmp_path / "b.safetensors")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("objective", "bogus", "objective"),
        ("meta_grad", "bogus", "strategy"),
        ("inner_optimizer", "rmsprop", "inner"),
        ("tau", 0.0, "tau"),
        ("inner_steps", 0, "inner-steps"),
        ("device", "tpu", "device"),
    ],
)
def test_bad_settings(tiny_lm, tmp_path, field: str, value, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        distill(tiny_lm, _cfg(**{field: value}), tmp_path / "b.safetensors")


def test_zero_outer_steps_writes_the_initial_summary(tiny_lm, tmp_path) -> None:
    """--outer-steps 0 is the 'init only' bundle: the initialization of the same seed, untouched."""
    init = distill(tiny_lm, _cfg(outer_steps=0), tmp_path / "init.safetensors")
    assert init.summary["complete"] and init.steps == 0 and init.log_path.read_text() == ""
    one = distill(tiny_lm, _cfg(outer_steps=1, outer_lr=1e-12), tmp_path / "one.safetensors")
    torch.testing.assert_close(init.bundle.latent, one.bundle.latent, rtol=0, atol=1e-9)


def test_resume_of_a_finished_run_returns_its_bundle(tiny_lm, tmp_path) -> None:
    out = tmp_path / "b.safetensors"
    first = distill(tiny_lm, _cfg(), out, checkpoint_every=1)
    again = distill(tiny_lm, _cfg(), out, checkpoint_every=1, resume=True)
    assert again.summary["resumed"] == "already complete"
    assert torch.equal(again.bundle.latent, first.bundle.latent)
    with pytest.raises(ConfigError, match="nothing to resume"):
        distill(tiny_lm, _cfg(seed=4), out, resume=True)  # another run's bundle is not this run's result


def test_resumed_log_keeps_its_history_when_the_first_step_dies(tiny_lm, tmp_path, monkeypatch) -> None:
    out = tmp_path / "b.safetensors"
    Distillation(tiny_lm, _cfg(), out, checkpoint_every=2).run(until=3)
    log = out.with_suffix(".log.jsonl")
    assert len(log.read_text().splitlines()) == 3

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "outer_step", dies)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_lm, _cfg(), out, checkpoint_every=2, resume=True)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]  # the state's two steps
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_mtt_logs_the_checkpoint_it_started_from(tiny_lm, tiny_omega, tmp_path) -> None:
    from farzi.trajectories import load_trajectories

    offset = 3  # runs save 4 checkpoints (steps 0, 2, 4, 6): only step 0 has a target 3 saves later
    result = distill(
        tiny_lm,
        _cfg(objective="mtt", mtt_offset=offset, outer_steps=6),
        tmp_path / "b.safetensors",
        trajectories=tiny_omega,
    )
    omega = load_trajectories(tiny_omega)
    for line in result.log_path.read_text().splitlines():
        rec = json.loads(line)
        assert omega.later(rec["checkpoint"], offset) == rec["target"]
        assert omega.entry(rec["checkpoint"])["step"] == 0


def test_mtt_offset_longer_than_every_run_is_refused_up_front(tiny_lm, tiny_omega, tmp_path) -> None:
    with pytest.raises(ConfigError, match="--mtt-offset"):
        distill(tiny_lm, _cfg(objective="mtt", mtt_offset=4), tmp_path / "b.safetensors", trajectories=tiny_omega)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("seed", 2**64, "--seed"),
        ("seed", -1, "--seed"),
        ("latent_dim", 10**9, "latent would hold"),
        ("tau", 1e300, "--tau"),
        ("inner_momentum", 1.0, "--inner-momentum"),
        ("init_mix", 1.5, "--init-mix"),
        ("init_windows", "sentences", "--init-windows"),
        ("grad_clip", float("nan"), "--grad-clip"),
        ("outer_steps", -1, "--outer-steps"),
        ("model", "bogus", "--model"),
        ("model_overrides", {"d_model": "wide"}, "d_model"),
    ],
)
def test_validate_refuses_before_any_work(tiny_lm, tmp_path, field: str, value, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        distill(tiny_lm, _cfg(**{field: value}), tmp_path / "b.safetensors")
    assert not list(tmp_path.iterdir())


def test_inner_loop_refuses_a_model_in_train_mode(tiny_lm) -> None:
    from farzi.distill.inner import Adam
    from farzi.distill.metagrad import InnerLoop
    from farzi.models import build_model, make_config

    model = build_model("transformer", make_config("transformer", tiny_lm.vocab_size, **TINY_MODEL))
    with pytest.raises(ValueError, match="eval mode"):
        InnerLoop(model, [n for n, _ in model.named_parameters()], Adam(), lambda idx: None, [], [None])


def test_a_meta_batch_averages_the_meta_gradients_of_its_start_points(tiny_lm, tiny_omega) -> None:
    """meta_batch = 2: the outer step's gradient is the float64 mean of start points 0 and 1 of that step."""
    from farzi.distill.engine import average_meta_gradients
    from farzi.distill.init import initial_summary
    from farzi.distill.objectives import make_objective, step_draws
    from farzi.distill.summary import Summary
    from farzi.distill.teacher import load_teacher

    cfg = _cfg(meta_batch=2)
    teacher = load_teacher(tiny_lm, cfg, tiny_omega)
    summary = Summary.create(*initial_summary(cfg, tiny_lm, teacher), cfg.tau, [0], teacher.device)
    objective = make_objective(cfg, tiny_lm, teacher)
    parts = [objective(summary, step_draws(cfg.seed, 1, i)) for i in (0, 1)]
    assert parts[0].stats["checkpoint"] != parts[1].stats["checkpoint"] or not torch.equal(
        parts[0].grads[0], parts[1].grads[0]
    )
    grads, used = average_meta_gradients(parts)
    assert used == 2
    for k in range(2):
        want = (parts[0].grads[k].double() + parts[1].grads[k].double()) / 2
        torch.testing.assert_close(grads[k].double(), want, rtol=1e-6, atol=1e-9)
    broken = [parts[0], objectives.Contribution(float("nan"), parts[1].grads, {})]
    grads, used = average_meta_gradients(broken)  # a non-finite start point is left out
    assert used == 1 and torch.equal(grads[0], parts[0].grads[0].double().to(grads[0].dtype))


def test_a_meta_batch_run_logs_every_start_point(tiny_lm, tiny_omega, tmp_path) -> None:
    result = distill(tiny_lm, _cfg(meta_batch=3, outer_steps=2), tmp_path / "b.safetensors", trajectories=tiny_omega)
    for line in result.log_path.read_text().splitlines():
        rec = json.loads(line)
        assert len(rec["starts"]) == 3 and all(s["finite"] for s in rec["starts"])
        assert math.isclose(rec["meta_loss"], sum(s["meta_loss"] for s in rec["starts"]) / 3)
        assert all(math.isclose(s["real_loss_delta"], s["meta_loss"] - s["real_loss_start"]) for s in rec["starts"])


def test_inner_state_omega_continues_the_runs_adam(tiny_lm, tiny_omega, tmp_path) -> None:
    fresh = distill(
        tiny_lm, _cfg(outer_steps=2, inner_state="fresh"), tmp_path / "a.safetensors", trajectories=tiny_omega
    )
    cont = distill(
        tiny_lm, _cfg(outer_steps=2, inner_state="omega"), tmp_path / "b.safetensors", trajectories=tiny_omega
    )
    assert not torch.equal(fresh.bundle.latent, cont.bundle.latent)
    logs = [json.loads(x) for x in cont.log_path.read_text().splitlines()]
    assert all("checkpoint_step" in r for r in logs)
    # a trained checkpoint continues its run's moments; a step-0 one has none (the run's own state there)
    assert [r["moments"] for r in logs] == [r["checkpoint_step"] > 0 for r in logs]
    kept = cont.bundle.meta["history"]["log"]["starts_with_moments"]
    assert kept == [sum(r["checkpoint_step"] > 0 for r in logs), 2]
    assert fresh.bundle.meta["history"]["log"]["starts_with_moments"] == [0, 2]


def test_selection_keeps_the_best_candidate_and_says_which(tiny_lm, tiny_omega, tmp_path, monkeypatch) -> None:
    """select_every: candidates at 0, every N and the end; the bundle is the best one's summary."""
    scores = iter([5.0, 3.0, 4.0])  # step 0, 2, 4: step 2 is best (perplexity: lower is better)
    seen = []

    def fake_score(summary, ds, teacher, cfg):
        seen.append(summary.latent.detach().clone())
        return next(scores)

    monkeypatch.setattr(engine, "_score", fake_score)
    result = distill(tiny_lm, _cfg(select_every=2), tmp_path / "b.safetensors", trajectories=tiny_omega)
    history = result.bundle.meta["history"]["selection"]
    assert history == {
        "metric": "ppl_corpus",
        "candidates": [{"step": 0, "value": 5.0}, {"step": 2, "value": 3.0}, {"step": 4, "value": 4.0}],
        "selected_step": 2,
    }
    assert torch.equal(result.bundle.latent, seen[1])
    logs = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert [r.get("selection", {}).get("step") for r in logs] == [None, 2, None, 4]


def test_selection_with_a_real_student_and_resume(tiny_lm, tiny_omega, tmp_path, monkeypatch) -> None:
    """The real scorer (a recipe student), and a run killed after a selection resumes bitwise."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cfg = _cfg(select_every=2, recipe_steps=3)
    whole = distill(tiny_lm, cfg, tmp_path / "whole.safetensors", trajectories=tiny_omega)
    assert len(whole.bundle.meta["history"]["selection"]["candidates"]) == 3
    killed = tmp_path / "killed.safetensors"
    Distillation(tiny_lm, cfg, killed, trajectories=tiny_omega, checkpoint_every=2).run(until=3)
    distill(tiny_lm, cfg, killed, trajectories=tiny_omega, checkpoint_every=2, resume=True)
    assert killed.read_bytes() == (tmp_path / "whole.safetensors").read_bytes()


def test_the_bundle_records_its_recipe_and_log_summary(tiny_lm, tiny_omega, tmp_path) -> None:
    cfg = _cfg(recipe_lr=0.004, recipe_weight_decay=0.002, recipe_steps=30, recipe_batch=2)
    result = distill(tiny_lm, cfg, tmp_path / "b.safetensors", trajectories=tiny_omega)
    assert result.bundle.recipe == {
        "optimizer": "adam",
        "lr": 0.004,
        "weight_decay": 0.002,
        "batch_size": 2,
        "max_steps": 30,
        "eval_every": 2,
        "patience": 0,
        "metric": "ppl_corpus",
    }
    log = result.bundle.meta["history"]["log"]
    assert log["outer_steps"] == 4 and sum(s["starts"] for s in log["stages"]) == 4
    assert result.bundle.meta["history"]["init"] == {"init": "teacher", "windows": "within"}


def test_auto_init_windows_join_sentences_where_long_ones_hold_under_half(tiny_lm, tiny_omega, tmp_path) -> None:
    """tiny_lm's sentences >= 16 tokens hold 44 % of its training tokens: auto joins sentences."""
    result = distill(tiny_lm, _cfg(xi=16, outer_steps=1), tmp_path / "b.safetensors", trajectories=tiny_omega)
    assert result.bundle.meta["history"]["init"] == {"init": "teacher", "windows": "joined"}


def test_summarize_log_groups_starts_by_stage() -> None:
    records = [
        {"checkpoint_step": 0, "real_loss_delta": -0.5, "grad_norm": 9.0},
        {"checkpoint_step": 10, "real_loss_delta": 0.25, "grad_norm": 1.0},
        {"checkpoint_step": 40, "real_loss_delta": 0.5, "grad_norm": 2.0, "skipped": True},
        {"grad_norm": 3.0, "starts": [{"checkpoint_step": 40, "real_loss_delta": -0.25}]},
    ]
    out = engine.summarize_log(records)
    assert out["outer_steps"] == 4 and out["skipped"] == 1
    assert out["stages"] == [
        {
            "checkpoint_steps": [0, 10],
            "starts": 1,
            "real_loss_delta_mean": -0.5,
            "worse_share": 0.0,
            "grad_norm_median": 9.0,
        },
        {
            "checkpoint_steps": [10, 20],
            "starts": 1,
            "real_loss_delta_mean": 0.25,
            "worse_share": 1.0,
            "grad_norm_median": 1.0,
        },
        {
            "checkpoint_steps": [30, 40],
            "starts": 2,
            "real_loss_delta_mean": 0.125,
            "worse_share": 0.5,
            "grad_norm_median": 3.0,
        },
    ]


def test_normalized_start_weighting_counts_every_start_alike() -> None:
    from farzi.distill.engine import average_meta_gradients

    a = objectives.Contribution(1.0, [torch.tensor([3.0, 4.0])], {})  # norm 5
    b = objectives.Contribution(1.0, [torch.tensor([0.0, 0.1])], {})  # norm 0.1
    grads, used = average_meta_gradients([a, b], normalize=True)
    assert used == 2
    torch.testing.assert_close(grads[0], torch.tensor([0.3, 0.9]))  # ((0.6, 0.8) + (0, 1)) / 2
    grads, _ = average_meta_gradients([a, b])
    torch.testing.assert_close(grads[0], torch.tensor([1.5, 2.05]))


def _start_steps(result) -> list[int]:
    """The training step of each outer step's start checkpoint, from the distillation log."""
    return [json.loads(x)["checkpoint_step"] for x in result.log_path.read_text().splitlines()]


def test_omega_min_step_skips_untrained_checkpoints(tiny_lm, tiny_omega, tmp_path) -> None:
    result = distill(
        tiny_lm, _cfg(omega_min_step=4, outer_steps=6), tmp_path / "b.safetensors", trajectories=tiny_omega
    )
    steps = _start_steps(result)
    assert steps and all(s >= 4 for s in steps)
    with pytest.raises(ConfigError, match="--omega-min-step"):
        distill(tiny_lm, _cfg(omega_min_step=7), tmp_path / "c.safetensors", trajectories=tiny_omega)


def test_omega_max_step_keeps_to_early_checkpoints(tiny_lm, tiny_omega, tmp_path) -> None:
    result = distill(
        tiny_lm, _cfg(omega_max_step=2, outer_steps=6), tmp_path / "b.safetensors", trajectories=tiny_omega
    )
    steps = _start_steps(result)
    assert steps and all(s <= 2 for s in steps)
    both = distill(
        tiny_lm,
        _cfg(omega_min_step=2, omega_max_step=4, outer_steps=6),
        tmp_path / "c.safetensors",
        trajectories=tiny_omega,
    )
    steps = _start_steps(both)
    assert steps and all(2 <= s <= 4 for s in steps)
    with pytest.raises(ConfigError, match="--omega-max-step 1 is below --omega-min-step 2"):
        _cfg(omega_min_step=2, omega_max_step=1).validate()


def test_learned_tau_and_inner_lr_are_outer_parameters(tiny_lm, tiny_omega, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cfg = _cfg(learn_tau=True, learn_inner_lr=True, outer_lr=0.05, outer_steps=4)
    whole = distill(tiny_lm, cfg, tmp_path / "whole.safetensors", trajectories=tiny_omega)
    learned = whole.bundle.meta["history"]["learned"]
    assert whole.bundle.tau == pytest.approx(learned["tau"]) and learned["tau"] != cfg.tau
    assert learned["inner_lr"] != cfg.inner_lr
    killed = tmp_path / "killed.safetensors"
    Distillation(tiny_lm, cfg, killed, trajectories=tiny_omega, checkpoint_every=2).run(until=3)
    distill(tiny_lm, cfg, killed, trajectories=tiny_omega, checkpoint_every=2, resume=True)
    assert killed.read_bytes() == (tmp_path / "whole.safetensors").read_bytes()


def test_a_named_teacher_takes_every_setting_of_its_model() -> None:
    # `farzictl demo` distills a Transformer teacher with d_ff, a setting the CLI has no flag for
    DistillConfig(mu=4, xi=8, model="transformer", model_overrides={"d_ff": 64, "dropout": 0.1}).validate()
    with pytest.raises(ConfigError, match=r"unknown teacher setting 'd_ff'; use only: max_len, .*dropout$"):
        DistillConfig(mu=4, xi=8, model="sasrec", model_overrides={"d_ff": 64}).validate()  # SASRec has none
    with pytest.raises(ConfigError, match="unknown teacher setting 'bogus'.* d_ff"):
        DistillConfig(mu=4, xi=8, model="transformer", model_overrides={"bogus": 1}).validate()
