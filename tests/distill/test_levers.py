"""Two levers beyond the paper (issue 29, TD3's first and third changes), off by default.

* ``--decoder tied`` / ``tied-frozen``: the summary's decoder is the teacher's token embedding transposed,
  so logits are latent x embedding^T (the latent as wide as the teacher's d_model); trained from there, or
  never updated.
* ``--feature-align W``: the meta-objective adds W x the mean squared difference between the inner-trained
  model's last hidden states and a full-data model's on the real batch's tokens.

For each, the exact reverse-mode meta-gradient matches plain autograd through the unrolled inner loop in
float64 (dense and sparse summaries for the tied decoder); a frozen decoder ends a run bitwise as the teacher's
embedding transposed; ``--feature-align 0`` is the plain objective bitwise; bad values are one line."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import farzictl

from farzi.distill import init as init_module
from farzi.distill.config import DistillConfig
from farzi.distill.engine import Distillation, distill
from farzi.distill.inner import Adam
from farzi.distill.metagrad import InnerLoop, meta_gradient
from farzi.distill.objectives import MetaMatching, feature_distance, features_at, step_draws
from farzi.distill.summary import Summary, banned_mask, top_support
from farzi.distill.teacher import Teacher
from farzi.errors import ConfigError
from farzi.models import build_model, functional_loss, make_config
from farzi.train import TrainConfig
from farzi.trajectories import train_trajectories

V, MU, XI, K, DM = 23, 6, 8, 5, 8
TINY = {"max_len": 16, "d_model": 8, "n_layers": 1}
TINY_LM = {**TINY, "n_heads": 2}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = make_config("sasrec", V, max_len=XI, d_model=DM, n_layers=1, dropout=0.0)
    model = build_model("sasrec", cfg).double().eval()
    return model, [n for n, _ in model.named_parameters()]


def _relative_error(got, want) -> float:
    g, w = (torch.cat([t.reshape(-1) for t in m.grads]) for m in (got, want))
    return float((g - w).norm() / w.norm())


# ------------------------------------------------------------------ the tied decoder
@pytest.mark.parametrize("support", [0, K])
@pytest.mark.parametrize("train_decoder", [True, False])
def test_the_meta_gradient_through_a_tied_decoder_is_exact(support: int, train_decoder: bool) -> None:
    """float64: reverse-mode Adam against plain autograd, the decoder the model's embedding transposed,
    trained (tied) or out of the outer parameters (tied-frozen), dense and sparse."""
    model, names = _model()
    emb_t = model.token_embeddings().detach().t().clone()  # [d_model, V]
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(MU, XI, DM, dtype=torch.float64, generator=gen)  # [mu, xi, d_model]
    summary = Summary.create(latent, emb_t, 1.0, [0], torch.device("cpu"), train_decoder=train_decoder)
    if support:
        summary.support = top_support(latent, emb_t, support, banned_mask(V, [0]))  # [mu, xi, K]
    assert summary.names == (["latent", "decoder"] if train_decoder else ["latent"])
    w0 = [p.detach().clone() for p in model.parameters()]
    batches = [torch.randperm(MU, generator=gen)[:3] for _ in range(8)]
    x_real = torch.randint(1, V, (5, XI), generator=gen)

    def terminal(w):
        return functional_loss(model, dict(zip(names, w, strict=True)), x_real)

    loop = InnerLoop(model, names, Adam(lr=0.01), summary.syn, summary.params, batches, compute_dtype=torch.float64)
    want = meta_gradient(loop, w0, terminal, "unroll")
    got = meta_gradient(loop, w0, terminal, "reverse")
    assert _relative_error(got, want) <= 1e-6  # as tests/distill/test_sparse.py
    assert got.meta_loss == pytest.approx(want.meta_loss, rel=1e-12)
    assert len(got.grads) == (2 if train_decoder else 1) and float(want.grads[0].abs().sum()) > 0


def _rec_cfg(**kw) -> DistillConfig:
    base = dict(mu=4, xi=8, latent_dim=4, inner_steps=2, outer_steps=3, real_batch=8, objective="mm", init="random")
    base.update(model="sasrec", model_overrides=TINY, seed=3)
    return DistillConfig.from_dict({**base, **kw})


@pytest.mark.parametrize("support", [0, 4])
def test_a_frozen_tied_decoder_ends_the_run_as_the_teachers_embedding(tiny_rec, tmp_path, support: int) -> None:
    run = Distillation(tiny_rec, _rec_cfg(decoder="tied-frozen", support=support), tmp_path / "f.safetensors")
    result = run.run()
    emb_t = run.teacher.trained_model().token_embeddings().detach().t()  # [d_model, V]
    assert torch.equal(result.bundle.decoder, emb_t)  # bitwise: no outer update
    assert result.bundle.latent.shape == (4, 8, TINY["d_model"])  # the teacher's width, not --latent-dim 4
    assert result.bundle.meta["distill"]["decoder"] == "tied-frozen"
    init = distill(
        tiny_rec, _rec_cfg(decoder="tied-frozen", support=support, outer_steps=0), tmp_path / "i.safetensors"
    )
    assert not torch.equal(init.bundle.latent, result.bundle.latent)  # the latent did move


def test_a_tied_decoder_starts_as_the_embedding_and_is_trained(tiny_rec, tmp_path) -> None:
    run = Distillation(tiny_rec, _rec_cfg(decoder="tied", outer_steps=0), tmp_path / "i.safetensors")
    init = run.run()
    emb_t = run.teacher.trained_model().token_embeddings().detach().t()
    assert torch.equal(init.bundle.decoder, emb_t)
    trained = distill(tiny_rec, _rec_cfg(decoder="tied"), tmp_path / "t.safetensors")
    assert not torch.equal(trained.bundle.decoder, emb_t)


def test_a_killed_tied_frozen_run_resumes_bitwise(tiny_rec, tmp_path) -> None:
    cfg = _rec_cfg(decoder="tied-frozen", outer_steps=4, learn_tau=True)
    whole = distill(tiny_rec, cfg, tmp_path / "w.safetensors")
    killed = tmp_path / "k.safetensors"
    Distillation(tiny_rec, cfg, killed, checkpoint_every=1).run(until=2)
    resumed = distill(tiny_rec, cfg, killed, checkpoint_every=1, resume=True)
    assert torch.equal(whole.bundle.latent, resumed.bundle.latent)
    assert torch.equal(whole.bundle.decoder, resumed.bundle.decoder)


@pytest.fixture(scope="module")
def omega(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("omega") / "traj"
    train_trajectories(tiny_lm, "transformer", 2, 2, TrainConfig(max_steps=4, batch_size=16, patience=0), out, TINY_LM)
    return out


def _lm_cfg(**kw) -> DistillConfig:
    base = dict(mu=4, xi=8, latent_dim=4, inner_steps=2, outer_steps=2, real_batch=8, objective="farzi")
    base.update(model="transformer", model_overrides=TINY_LM, seed=3)
    return DistillConfig.from_dict({**base, **kw})


@pytest.mark.parametrize("support", [0, 4])
def test_the_teacher_init_fits_the_latent_to_a_tied_frozen_decoder(tiny_lm, omega, support: int) -> None:
    run = Distillation(tiny_lm, _lm_cfg(decoder="tied-frozen", init="teacher", support=support), None, omega)
    run.load_teacher()
    run.start(fit_steps=30)
    emb_t = run.teacher.trained_model().token_embeddings().detach().t()
    assert torch.equal(run.summary.decoder.detach(), emb_t) and not run.summary.decoder.requires_grad
    assert run.summary.latent.shape == (4, 8, TINY_LM["d_model"]) and run.summary.names == ["latent"]


def test_a_latent_too_large_for_the_teachers_width_is_one_line(tiny_rec, monkeypatch) -> None:
    monkeypatch.setattr(init_module, "MAX_SUMMARY_ELEMENTS", 4 * 8 * 7)  # room for d 7, the teacher has 8
    run = Distillation(tiny_rec, _rec_cfg(decoder="tied"), None)
    run.load_teacher()
    with pytest.raises(ConfigError, match="the teacher's d_model") as err:
        run.start()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ feature alignment
def _objective(weight: float) -> tuple[MetaMatching, torch.nn.Module, list[str]]:
    model, names = _model()
    teacher = Teacher(model=model, omega=None, device=torch.device("cpu"))
    cfg = DistillConfig.from_dict({"objective": "mm", "feature_align": weight})
    return MetaMatching(cfg, None, teacher), model, names  # type: ignore[arg-type]  # no real batch drawn


def test_the_feature_distance_is_over_real_tokens_only() -> None:
    model, names = _model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randint(1, V, (3, XI), generator=torch.Generator().manual_seed(2))
    x[0, 5:] = 0  # padding
    target = torch.randn(3, XI, DM, dtype=torch.float64)
    h = features_at(model, params, x).detach()  # [B, L, d]
    real = x != 0
    want = (h - target).pow(2).mean(-1)[real].mean()
    assert float(feature_distance(model, params, x, target)) == pytest.approx(float(want), rel=1e-12)
    moved = target.clone()
    moved[0, 5:] += 100.0  # what the target says at padding does not count
    assert float(feature_distance(model, params, x, moved)) == pytest.approx(float(want), rel=1e-12)
    assert float(feature_distance(model, params, x, h)) == 0.0


def test_the_meta_gradient_with_feature_alignment_is_exact() -> None:
    """float64: the objective's own terminal (real loss + W x feature distance) through reverse-mode Adam
    against plain autograd through the unrolled loop; the term changes the meta-gradient."""
    objective, model, names = _objective(0.5)
    gen = torch.Generator().manual_seed(4)
    latent = torch.randn(MU, XI, 4, dtype=torch.float64, generator=gen).requires_grad_()
    decoder = torch.randn(4, V, dtype=torch.float64, generator=gen).requires_grad_()
    summary = Summary(latent, decoder, 1.0, banned_mask(V, [0]))
    x_real = torch.randint(1, V, (5, XI), generator=gen)
    x_real[1, 4:] = 0
    full, _ = _model(seed=7)  # another model's hidden states as the full-data model's
    with torch.no_grad():
        target = full.features(x_real)  # [B, L, d]
    w0 = [p.detach().clone() for p in model.parameters()]
    batches = [torch.randperm(MU, generator=gen)[:3] for _ in range(8)]
    loop = InnerLoop(model, names, Adam(lr=0.01), summary.syn, summary.params, batches, compute_dtype=torch.float64)
    seen: dict[str, float] = {}
    terminal = objective.terminal(x_real, None, target, seen)
    want = meta_gradient(loop, w0, terminal, "unroll")
    for strategy, bound in (("checkpointed", 1e-10), ("reverse", 1e-5)):  # as tests/distill/test_sampled.py
        got = meta_gradient(loop, w0, terminal, strategy)
        assert _relative_error(got, want) <= bound, strategy
        assert got.meta_loss == pytest.approx(want.meta_loss, rel=1e-12)
    assert seen["feature_distance"] > 0
    plain = meta_gradient(loop, w0, objective.terminal(x_real, None, None, {}), "unroll")
    assert want.meta_loss == pytest.approx(plain.meta_loss + 0.5 * seen["feature_distance"], rel=1e-10)
    assert not torch.allclose(plain.grads[0], want.grads[0])


def test_feature_align_zero_is_the_plain_objective_bitwise(tiny_lm, omega) -> None:
    """With weight 0 no full-data model is asked and the terminal is the real loss as it was."""
    run = Distillation(tiny_lm, _lm_cfg(), None, omega)
    run.load_teacher()
    run.start(fit_steps=5)
    objective = run.objective
    assert isinstance(objective, MetaMatching)
    got = objective(run.summary, step_draws(3, 1))
    draws = step_draws(3, 1)
    start, x_real = objective.start(draws), objective.real_batch(draws)
    batches = objective.syn_batches(draws)
    assert objective.target_features(start, x_real) is None

    def plain(w):  # the terminal before --feature-align
        return functional_loss(run.teacher.model, dict(zip(objective.names, w, strict=True)), x_real)

    want = objective.unrolled(run.summary, start, batches, plain)
    assert got.meta_loss == want.meta_loss
    assert all(torch.equal(a, b) for a, b in zip(got.grads, want.grads, strict=True))
    assert "feature_distance" not in got.stats


def test_a_run_with_feature_alignment_logs_the_distance_to_its_runs_last_checkpoint(tiny_lm, omega, tmp_path) -> None:
    cfg = _lm_cfg(feature_align=0.1)
    result = distill(tiny_lm, cfg, tmp_path / "a.safetensors", trajectories=omega)
    lines = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert all(x["feature_distance"] >= 0 and x["feature_distance_start"] >= 0 for x in lines)
    assert result.bundle.meta["distill"]["feature_align"] == 0.1
    plain = distill(tiny_lm, _lm_cfg(), tmp_path / "p.safetensors", trajectories=omega)
    assert not torch.equal(plain.bundle.latent, result.bundle.latent)
    teacher = Distillation(tiny_lm, cfg, None, omega)
    teacher.load_teacher()
    om = teacher.teacher.omega
    assert om is not None
    for i in range(len(om)):  # the full-data model: the last checkpoint of the start's own run
        j = max(
            (k for k in range(len(om)) if om.entry(k)["run"] == om.entry(i)["run"]), key=lambda k: om.entry(k)["step"]
        )
        want = teacher.teacher.checkpoint(j)
        assert all(torch.equal(a, b) for a, b in zip(teacher.teacher.full_data(i), want, strict=True))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--feature-align", "-1"], "--feature-align -1.0 must be a number >= 0"),
        (["--feature-align", "0.1", "--objective", "dc"], "--feature-align applies to objectives farzi and mm"),
        (["--decoder", "shared"], "'shared' is not one of 'free', 'tied', 'tied-frozen'"),
    ],
)
def test_bad_lever_values_are_one_line(tiny_rec, tmp_path, args: list[str], match: str) -> None:
    line = farzictl("distill", str(tiny_rec.path), "--budget", "4x8", *args, "--out", str(tmp_path / "b.safetensors"))
    assert match in line.one_error_line()
