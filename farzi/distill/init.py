"""The initial summary: where the outer loop starts (``--init``).

* ``teacher``: ``mu`` real windows of ``xi`` tokens (``--init-windows``: inside long sequences, or
  sequences joined end to end); at each position the target
  mixes the real token (weight ``init_mix``) with the trained teacher's prediction
  for it, and (latent, decoder) are fitted to those targets, the decoder starting
  from the teacher's embeddings on their top-``d`` principal directions;
* ``real``: the same windows, smoothed over the teacher's embedding neighbourhood
  (no fitting): softmax(latent @ decoder / tau) puts most mass on the real token;
* ``random``: a random latent and decoder (the paper's start).

With ``--decoder tied`` / ``tied-frozen`` the decoder is the trained teacher's token embedding
transposed [d_model, V] (:func:`tied_decoder`) and stays so through the init (the teacher init fits
the latent alone; ``real`` and ``random`` scale the latent to it), so the outer loop starts exactly
there; the latent is then as wide as the teacher's d_model (``--latent-dim`` is not used).

Without trajectories there is no trained teacher to ask, and ``teacher`` falls back
to ``real`` over the untrained teacher's embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from farzi.data.prepared import PreparedDataset
from farzi.distill.config import MAX_SUMMARY_ELEMENTS, Decoder, DistillConfig, Init
from farzi.distill.summary import (
    banned_mask,
    fit_sparse_summary,
    fit_summary,
    init_from_real,
    init_summary,
    principal_decoder,
    real_windows,
    sparse_teacher_targets,
    teacher_targets,
    top_support,
    windows_kind,
)
from farzi.distill.teacher import Teacher
from farzi.errors import ConfigError
from farzi.models import SequenceModel

FIT_STEPS = 500  # Adam steps fitting the teacher init's latent and decoder to its targets


def effective_init(cfg: DistillConfig, teacher: Teacher) -> Init:
    """The initialization that will actually run (``teacher`` needs Omega)."""
    if cfg.init is Init.teacher and teacher.omega is None:
        return Init.real
    return cfg.init


def init_record(cfg: DistillConfig, ds: PreparedDataset, teacher: Teacher) -> dict[str, str]:
    """What the bundle's history says of its start: the init that ran and, for the inits that start
    from real windows, which windows ``--init-windows`` (``auto`` included) took."""
    init = effective_init(cfg, teacher)
    out = {"init": init.value}
    if init in (Init.teacher, Init.real):
        out["windows"] = windows_kind(ds.train, cfg.xi, cfg.init_windows.value)
    return out


def tied_decoder(model: SequenceModel, cfg: DistillConfig) -> Tensor:
    """The teacher's token embedding transposed, as a decoder: [d_model, V] float32 (a copy); refused
    where the latent it implies, mu x xi x d_model, is over the size limit."""
    emb = model.token_embeddings()  # [V, d_model]
    d = int(emb.shape[1])
    if cfg.mu * cfg.xi * d > MAX_SUMMARY_ELEMENTS:
        raise ConfigError(
            f"--decoder {cfg.decoder.value}: the latent would hold {cfg.mu} x {cfg.xi} x {d} (the teacher's "
            f"d_model) values, over the limit of {MAX_SUMMARY_ELEMENTS}",
            "pick a smaller --budget, or --decoder free",
        )
    return emb.detach().t().contiguous().float().clone()


def _tied_start(cfg: DistillConfig, ds: PreparedDataset, init: Init, emb_t: Tensor, gen: torch.Generator) -> Tensor:
    """The ``real`` or ``random`` init's latent [mu, xi, d_model] for the tied decoder ``emb_t`` [d_model, V]."""
    if init is Init.real:
        tokens = real_windows(ds.train, cfg.mu, cfg.xi, gen, cfg.init_windows.value)  # [mu, xi]
        cols = emb_t.t()[tokens]  # [mu, xi, d_model]
        # the real token's logit is init_sharpness, a neighbour's init_sharpness x <e_tok, e_j> / |e_tok|^2
        return (cfg.init_sharpness * cfg.tau) * cols / cols.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
    rms = float(emb_t.pow(2).sum(0).mean().sqrt()) or 1.0  # the columns' root-mean-square norm
    return torch.randn(cfg.mu, cfg.xi, emb_t.shape[0], generator=gen) * (cfg.init_scale / rms)  # logits O(scale)


def initial_sparse_summary(
    cfg: DistillConfig, ds: PreparedDataset, teacher: Teacher, fit_steps: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(latent, decoder, support [mu, xi, K]) of a sparse summary (``--support K``). The teacher init
    keeps each position's K heaviest targets and fits over them alone (O(K d) a position and step, not
    O(V d)); the other inits take each position's K largest logits of their dense start."""
    k = cfg.support
    if effective_init(cfg, teacher) is not Init.teacher:
        latent, decoder = initial_summary(cfg, ds, teacher)
        return latent, decoder, top_support(latent, decoder, k, banned_mask(ds.vocab_size, [ds.vocab.pad_id]))
    gen = torch.Generator().manual_seed(cfg.seed)
    pad = [ds.vocab.pad_id]
    tokens = real_windows(ds.train, cfg.mu, cfg.xi, gen, cfg.init_windows.value)  # [mu, xi]
    model = teacher.trained_model()
    banned = banned_mask(ds.vocab_size, pad, tokens.device)
    support, weights = sparse_teacher_targets(tokens, model, cfg.init_mix, banned, k)  # [mu, xi, K] each
    tied = cfg.decoder is not Decoder.free
    decoder0 = tied_decoder(model, cfg) if tied else principal_decoder(model.token_embeddings(), cfg.latent_dim, pad)
    steps = FIT_STEPS if fit_steps is None else fit_steps
    latent, decoder = fit_sparse_summary(
        support, weights, decoder0, cfg.tau, steps=steps, gen=gen, train_decoder=not tied
    )  # [mu, xi, d], [d, V]
    _check_finite(latent, decoder, cfg, Init.teacher)
    return latent, decoder, support


def initial_summary(
    cfg: DistillConfig, ds: PreparedDataset, teacher: Teacher, fit_steps: int | None = None
) -> tuple[Tensor, Tensor]:
    """(latent [mu, xi, d], decoder [d, V]) on the CPU, seeded by ``cfg.seed`` alone.

    ``fit_steps``: the teacher init's fitting steps (default: :data:`FIT_STEPS`); farzi.plan times a few.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    pad = [ds.vocab.pad_id]
    init = effective_init(cfg, teacher)
    tied = cfg.decoder is not Decoder.free
    if tied and init is not Init.teacher:
        decoder = tied_decoder(teacher.trained_model(), cfg)  # [d_model, V]
        latent = _tied_start(cfg, ds, init, decoder, gen)  # [mu, xi, d_model]
    elif init is Init.teacher:
        tokens = real_windows(ds.train, cfg.mu, cfg.xi, gen, cfg.init_windows.value)  # [mu, xi]
        model = teacher.trained_model()
        with torch.no_grad():
            logits = model(tokens)  # [mu, xi, V]
        banned = banned_mask(ds.vocab_size, pad)
        targets = teacher_targets(tokens, logits, cfg.init_mix, banned)  # [mu, xi, V]
        if tied:  # the latent alone is fitted: the decoder stays the embedding
            decoder0 = tied_decoder(model, cfg)  # [d_model, V]
        else:
            decoder0 = principal_decoder(model.token_embeddings(), cfg.latent_dim, pad)  # [d, V]
        steps = FIT_STEPS if fit_steps is None else fit_steps
        latent, decoder = fit_summary(
            targets, decoder0, cfg.tau, banned, steps=steps, gen=gen, train_decoder=not tied
        )  # [mu, xi, d], [d, V]
    elif init is Init.real:
        tokens = real_windows(ds.train, cfg.mu, cfg.xi, gen, cfg.init_windows.value)
        emb = teacher.trained_model().token_embeddings()
        latent, decoder = init_from_real(tokens, emb, cfg.latent_dim, cfg.init_sharpness, cfg.tau, pad)
    else:
        latent, decoder = init_summary(cfg.mu, cfg.xi, cfg.latent_dim, ds.vocab_size, gen, cfg.init_scale)
    _check_finite(latent, decoder, cfg, init)
    return latent, decoder


def _check_finite(latent: Tensor, decoder: Tensor, cfg: DistillConfig, init: Init) -> None:
    if not (torch.isfinite(latent).all() and torch.isfinite(decoder).all()):
        raise ConfigError(
            f"the initial summary ({init.value} init, tau {cfg.tau:g}) holds NaN or infinite values",
            "pick a --tau closer to 1 or a smaller --init-sharpness / --init-scale",
        )
