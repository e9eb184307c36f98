"""Sparse summaries (``--support K``): each synthetic position a distribution over K candidates.

The sparse inputs and targets give the same losses and gradients as their dense equivalents, the
exact reverse-mode meta-gradient through a sparse summary matches plain autograd in float64, and a
sparse run writes a v2 bundle that students, inspect and export read."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import farzictl
from torch.func import functional_call

from farzi.distill.bundle import load_bundle
from farzi.distill.engine import Distillation, DistillConfig, distill
from farzi.distill.inner import Adam
from farzi.distill.metagrad import InnerLoop, meta_gradient
from farzi.distill.summary import banned_mask, materialize, materialize_sparse, top_support
from farzi.models import SparseDist, build_model, make_config, next_token_loss

V, MU, XI, D, K = 23, 6, 8, 4, 5
TINY_REC = {"max_len": 16, "d_model": 8, "n_layers": 1}


def _summary(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(MU, XI, D, dtype=dtype, generator=gen).requires_grad_()
    decoder = torch.randn(D, V, dtype=dtype, generator=gen).requires_grad_()
    banned = banned_mask(V, [0])
    return latent, decoder, banned, top_support(latent.detach(), decoder.detach(), K, banned)


def test_the_support_is_each_positions_k_largest_logits_never_pad() -> None:
    latent, decoder, banned, support = _summary()
    logits = (latent @ decoder).detach().masked_fill(banned, float("-inf"))
    assert support.shape == (MU, XI, K) and not bool((support == 0).any())
    assert torch.equal(support, logits.topk(K, dim=-1).indices)
    # chunked over positions alike
    assert torch.equal(top_support(latent.detach(), decoder.detach(), K, banned, chunk_elements=V), support)


def test_sparse_distributions_are_the_dense_softmax_restricted_to_the_candidates() -> None:
    latent, decoder, banned, support = _summary()
    sparse = materialize_sparse(latent, decoder, 0.7, support)
    dense = materialize(latent, decoder, 0.7, banned)
    restricted = dense.gather(-1, support)
    assert torch.allclose(sparse.p, restricted / restricted.sum(-1, keepdim=True), atol=1e-12)
    assert torch.allclose(sparse.p.sum(-1), torch.ones(MU, XI, dtype=torch.float64))
    assert torch.allclose(sparse.dense(V).gather(-1, support), sparse.p)


@pytest.mark.parametrize("model_name", ["sasrec", "gru4rec", "transformer"])
def test_a_model_gives_the_same_loss_and_gradients_on_sparse_and_dense_inputs(model_name: str) -> None:
    latent, decoder, banned, support = _summary()
    cfg = make_config(model_name, V, max_len=XI, d_model=8, n_layers=1, dropout=0.0)
    model = build_model(model_name, cfg).double().eval()
    params = [latent, decoder, *model.parameters()]
    for loss_of in (lambda m, x: next_token_loss(m(x), x), lambda m, x: m.loss(x)):  # plain and fast paths
        x = materialize_sparse(latent, decoder, 1.0, support)
        a, b = loss_of(model, x), loss_of(model, materialize_sparse(latent, decoder, 1.0, support).dense(V))
        ga = torch.autograd.grad(a, params, allow_unused=True)
        gb = torch.autograd.grad(b, params, allow_unused=True)
        assert torch.allclose(a, b, atol=1e-12)
        for u, w in zip(ga, gb, strict=True):
            assert (u is None) == (w is None) and (u is None or torch.allclose(u, w, atol=1e-10))


@pytest.mark.parametrize("strategy", ["reverse", "checkpointed"])
def test_the_reverse_meta_gradient_through_a_sparse_summary_is_exact(strategy: str) -> None:
    """float64: the exact reverse-mode Adam against plain autograd through the unrolled loop."""
    torch.manual_seed(0)
    latent, decoder, _, support = _summary()
    cfg = make_config("transformer", V, max_len=12, d_model=8, n_layers=1, n_heads=2, d_ff=16, dropout=0.0)
    model = build_model("transformer", cfg).double().eval()
    names = [n for n, _ in model.named_parameters()]
    w0 = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randperm(MU, generator=gen)[:3] for _ in range(12)]
    x_real = torch.randint(1, V, (5, 10), generator=gen)

    def syn(idx):
        return materialize_sparse(latent, decoder, 1.0, support, idx)

    def terminal(w):
        return next_token_loss(functional_call(model, dict(zip(names, w, strict=True)), (x_real,)), x_real)

    loop = InnerLoop(model, names, Adam(lr=0.01), syn, [latent, decoder], batches, compute_dtype=torch.float64)
    want = meta_gradient(loop, w0, terminal, "unroll")
    got = meta_gradient(loop, w0, terminal, strategy)
    g, w = (torch.cat([t.reshape(-1) for t in m.grads]) for m in (got, want))
    assert float((g - w).norm() / w.norm()) <= 1e-6  # as the dense checks (tests/distill/test_metagrad.py)
    assert got.meta_loss == pytest.approx(want.meta_loss, rel=1e-12)
    touched = torch.zeros(V, dtype=torch.bool)
    touched[support.unique()] = True
    assert bool(want.grads[1][:, touched].abs().sum(0).gt(0).all())  # every candidate's column gets gradient
    assert not bool(want.grads[1][:, ~touched].any())  # and no other column


def _cfg(**kw) -> DistillConfig:
    base = dict(mu=4, xi=8, latent_dim=4, inner_steps=2, outer_steps=4, real_batch=8, objective="mm")
    base.update(model="sasrec", model_overrides=TINY_REC, seed=3, support=4, support_refresh=2)
    return DistillConfig.from_dict({**base, **kw})


def test_a_sparse_run_writes_a_v2_bundle_that_students_inspect_and_export_read(tiny_rec, tmp_path) -> None:
    out = tmp_path / "s.safetensors"
    result = distill(tiny_rec, _cfg(), out)
    data = load_bundle(out)
    assert data.meta["version"] == 2 and data.sparse and tuple(data.support.shape) == (4, 8, 4)
    assert data.meta["distill"]["support"] == 4 and result.summary["complete"]
    batch = data.batch(torch.arange(2))
    assert isinstance(batch, SparseDist) and batch.shape == (2, 8, 4)
    assert torch.allclose(data.materialize(torch.arange(2)).sum(-1), torch.ones(2, 8))
    student = farzictl(
        "train-student",
        str(tiny_rec.path),
        "--data",
        str(out),
        "--model",
        "sasrec",
        "--max-len",
        "16",
        "--d-model",
        "8",
        "--n-layers",
        "1",
        "--max-steps",
        "3",
        "--out",
        str(tmp_path / "m"),
        "--json",
    ).ok()
    assert json.loads(student.stdout)["data"]["mu"] == 4
    report = json.loads(farzictl("inspect", str(out), "--json").ok().stdout)
    assert report["valid"] and report["budget"] == "4x8"
    farzictl("export", str(out), "--to", "jsonl", "--out", str(tmp_path / "e.jsonl")).ok()
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) >= 4


def test_a_dense_run_still_writes_v1(tiny_rec, tmp_path) -> None:
    distill(tiny_rec, _cfg(support=0, outer_steps=1), tmp_path / "d.safetensors")
    data = load_bundle(tmp_path / "d.safetensors")
    assert data.meta["version"] == 1 and not data.sparse


def test_a_killed_sparse_run_resumes_bitwise_with_its_candidates(tiny_rec, tmp_path) -> None:
    whole = distill(tiny_rec, _cfg(outer_steps=5), tmp_path / "w.safetensors")
    killed = tmp_path / "k.safetensors"
    Distillation(tiny_rec, _cfg(outer_steps=5), killed, checkpoint_every=1).run(until=3)
    resumed = distill(tiny_rec, _cfg(outer_steps=5), killed, checkpoint_every=1, resume=True)
    assert torch.equal(whole.bundle.latent, resumed.bundle.latent)
    assert torch.equal(whole.bundle.support, resumed.bundle.support)


def test_support_beyond_the_vocabulary_is_one_line(tiny_rec, tmp_path) -> None:
    line = farzictl(
        "distill",
        str(tiny_rec.path),
        "--budget",
        "4x8",
        "--support",
        "100000",
        "--out",
        str(tmp_path / "b.safetensors"),
    )
    assert "--support 100000 exceeds the" in line.one_error_line()


def test_the_candidate_softmax_is_the_full_one_where_the_candidates_cover_the_vocabulary() -> None:
    from farzi.models.loss import candidate_loss

    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(MU, XI, D, dtype=torch.float64, generator=gen)
    decoder = torch.randn(D, V, dtype=torch.float64, generator=gen)
    cfg = make_config("sasrec", V, max_len=XI, d_model=8, n_layers=1, dropout=0.0)
    model = build_model("sasrec", cfg).double().eval()
    params = dict(model.named_parameters())
    every = top_support(latent, decoder, V - 1, banned_mask(V, [0]))  # every token but <pad>
    x = materialize_sparse(latent, decoder, 1.0, every)
    assert torch.allclose(candidate_loss(model, params, x), next_token_loss(model(x), x), atol=1e-12)
    few = materialize_sparse(latent, decoder, 1.0, every[..., :3])  # fewer candidates: a smaller softmax
    with torch.no_grad():
        assert float(candidate_loss(model, params, few)) < float(next_token_loss(model(few), few))


def test_the_reverse_meta_gradient_of_the_candidate_softmax_is_exact() -> None:
    torch.manual_seed(0)
    latent, decoder, _, support = _summary()
    cfg = make_config("sasrec", V, max_len=XI, d_model=8, n_layers=1, dropout=0.0)
    model = build_model("sasrec", cfg).double().eval()
    names = [n for n, _ in model.named_parameters()]
    w0 = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randperm(MU, generator=gen)[:3] for _ in range(8)]
    x_real = torch.randint(1, V, (5, XI), generator=gen)

    def terminal(w):
        return next_token_loss(functional_call(model, dict(zip(names, w, strict=True)), (x_real,)), x_real)

    def syn(idx):
        return materialize_sparse(latent, decoder, 1.0, support, idx)

    loop = InnerLoop(model, names, Adam(lr=0.01), syn, [latent, decoder], batches, compute_dtype=torch.float64)
    loop.candidates_only = True
    want = meta_gradient(loop, w0, terminal, "unroll")
    # checkpointed recomputes the forward states (no reversal): exact to rounding; reverse undoes Adam's
    # steps in float64 and drifts a little, as measured for the dense summaries (tests/distill/test_metagrad.py)
    for strategy, bound in (("checkpointed", 1e-10), ("reverse", 1e-5)):
        got = meta_gradient(loop, w0, terminal, strategy)
        g, w = (torch.cat([t.reshape(-1) for t in m.grads]) for m in (got, want))
        assert float((g - w).norm() / w.norm()) <= bound, strategy


def test_a_run_with_the_candidate_softmax_writes_its_bundle(tiny_rec, tmp_path) -> None:
    result = distill(tiny_rec, _cfg(inner_softmax="candidates", outer_steps=2), tmp_path / "c.safetensors")
    assert result.bundle.meta["distill"]["inner_softmax"] == "candidates" and result.summary["complete"]


def test_the_sparse_teacher_targets_are_the_dense_ones_heaviest_k_renormalized() -> None:
    from farzi.distill.summary import sparse_teacher_targets, teacher_targets

    torch.manual_seed(0)
    cfg = make_config("sasrec", V, max_len=XI, d_model=8, n_layers=1, dropout=0.0)
    model = build_model("sasrec", cfg).eval()
    tokens = torch.randint(1, V, (MU, XI))
    banned = banned_mask(V, [0])
    support, weights = sparse_teacher_targets(tokens, model, 0.2, banned, K, chunk_elements=2 * XI * V)  # 3 chunks
    with torch.no_grad():
        dense = teacher_targets(tokens, model(tokens), 0.2, banned)
    w, idx = dense.topk(K, dim=-1)
    assert torch.allclose(weights, w / w.sum(-1, keepdim=True))
    # position 0 is the real token alone (the rest tie at 0); after it the teacher's prediction is mixed in
    assert torch.equal(support[:, 1:], idx[:, 1:]) and torch.equal(support[:, 0, 0], tokens[:, 0])
    assert not bool((support == 0).any())


def test_a_sparse_teacher_init_fits_over_the_candidates(tiny_lm, tmp_path) -> None:
    from farzi.train import TrainConfig
    from farzi.trajectories import train_trajectories

    overrides = {"max_len": 16, "d_model": 8, "n_layers": 1, "n_heads": 2}
    omega = tmp_path / "omega"
    train_trajectories(
        tiny_lm, "transformer", 1, 2, TrainConfig(max_steps=4, batch_size=16, patience=0), omega, overrides
    )
    cfg = _cfg(model="transformer", model_overrides=overrides, objective="farzi", init="teacher", outer_steps=1)
    run = Distillation(tiny_lm, cfg, None, omega)
    run.load_teacher()
    run.start(fit_steps=30)
    p = run.summary.syn().p.detach()
    assert run.summary.support.shape == (4, 8, 4) and torch.allclose(p.sum(-1), torch.ones(4, 8))
    assert float(p[..., 0].mean()) > 1 / 4  # the heaviest target leads after the fit
    out = distill(tiny_lm, cfg, tmp_path / "t.safetensors", trajectories=omega)
    assert out.bundle.meta["history"]["init"]["init"] == "teacher"


def test_a_students_fused_step_on_sparse_targets_matches_the_dense_one() -> None:
    """Targets without gradient (a bundle's): the fused backward of farzi.models.loss, as for token ids."""
    latent, decoder, _, support = _summary()
    with torch.no_grad():
        x = materialize_sparse(latent, decoder, 1.0, support)
    cfg = make_config("sasrec", V, max_len=XI, d_model=8, n_layers=1, dropout=0.0)
    model = build_model("sasrec", cfg).double().eval()
    params = list(model.parameters())
    for chunk in (None, 7):  # one chunk of positions, and several
        from farzi.models.loss import features_next_token_loss

        a = features_next_token_loss(model.features(x), model.output_table(), x, chunk=chunk)
        b = features_next_token_loss(model.features(x.dense(V)), model.output_table(), x.dense(V), chunk=chunk)
        for u, w in zip(torch.autograd.grad(a, params), torch.autograd.grad(b, params), strict=True):
            assert torch.allclose(u, w, atol=1e-10)
        assert torch.allclose(a, b, atol=1e-12)
