"""farzictl: distill autoregressive datasets into Farzi Data.

Every command takes ``--home`` (or ``FARZI_HOME``) for the workspace, ``--seed``
for reproducibility and ``--json`` for scripts. Bad input prints one line on
stderr and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
import typer.main

from farzi._io import no_stray_torch_cache
from farzi._seed import SEED_MAX
from farzi.checkpoint import check_dataset, load_checkpoint
from farzi.data.prepare import SOURCES, PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.demo import TASKS, run_demo
from farzi.device import resolve_device
from farzi.distill.config import (
    DistillConfig,
    Init,
    InitWindows,
    InnerOptimizerName,
    InnerState,
    MetaGrad,
    Objective,
    StartWeighting,
    parse_budget,
)
from farzi.distill.engine import claim_bundle, distill
from farzi.distill.inspect import inspect_bundle
from farzi.distributed import DEFAULT_TIMEOUT as DEFAULT_RANK_TIMEOUT
from farzi.distributed import launched
from farzi.errors import DataError, FarziError
from farzi.evaluate import evaluate
from farzi.export import DECODINGS, FORMATS, ExportConfig, export_bundle
from farzi.models import DEFAULT_MODEL
from farzi.plan import plan_demo, plan_distill, plan_student, plan_trajectories
from farzi.presets import RECIPE_OVER_PRESET
from farzi.student import claim_model, parse_spec, train_student
from farzi.train import TrainConfig
from farzi.trajectories import claim_omega, train_trajectories
from farzi.workspace import bundles_dir, check_name, dataset_dir, models_dir, trajectories_dir
from farzictl import launch, session, ui

app = typer.Typer(
    name="farzictl",
    help="Distill autoregressive datasets (text corpora, interaction logs) into Farzi Data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Home = Annotated[
    Path | None,
    typer.Option("--home", envvar="FARZI_HOME", help="Workspace directory (default ~/.farzi).", show_default=False),
]
Seed = Annotated[
    int, typer.Option("--seed", min=0, max=SEED_MAX, help="Random seed (0 to 2**63-1); same seed, same result on CPU.")
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace the output even if it is not this command's own earlier result (its files are deleted).",
    ),
]


@app.command("prepare")
@ui.handle_errors
def prepare_cmd(
    name: Annotated[str, typer.Argument(help=f"Dataset: {', '.join(SOURCES)}.", show_default=False)],
    source: Annotated[Path | None, typer.Option(help="Directory with the dataset's files (no download).")] = None,
    train: Annotated[Path | None, typer.Option(help="text: training corpus, one sentence per line.")] = None,
    valid: Annotated[Path | None, typer.Option(help="text: validation corpus (default: 10% of --train).")] = None,
    test: Annotated[Path | None, typer.Option(help="text: test corpus (default: 10% of --train).")] = None,
    path: Annotated[Path | None, typer.Option(help="interactions: CSV/TSV/parquet log.")] = None,
    user_col: Annotated[str, typer.Option(help="interactions: user column.")] = "user",
    item_col: Annotated[str, typer.Option(help="interactions: item column.")] = "item",
    time_col: Annotated[str, typer.Option(help="interactions: time column.")] = "time",
    separator: Annotated[
        str | None, typer.Option(help="interactions: field separator (default from the file name).")
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="LM: keep this many most frequent training words.")] = 2000,
    min_length: Annotated[int, typer.Option(help="Recommendation: drop users with fewer interactions.")] = 2,
    synthetic_vocab: Annotated[int | None, typer.Option(help="synthetic-*: number of words/items.")] = None,
    synthetic_sequences: Annotated[
        int | None, typer.Option(help="synthetic-*: number of training sequences/users.")
    ] = None,
    mirror: Annotated[str | None, typer.Option(help="Download from this URL (base URL for ptb) instead.")] = None,
    as_name: Annotated[
        str | None, typer.Option("--name", help="Name in the workspace (default: the dataset's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write here instead of HOME/datasets/NAME.")] = None,
    overwrite: Overwrite = False,
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
) -> None:
    """Download or read a dataset and write it in farzi's prepared format."""
    opts = PrepareOptions(
        source=source,
        train=train,
        valid=valid,
        test=test,
        path=path,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        separator=separator,
        vocab_size=vocab_size,
        min_length=min_length,
        seed=seed,
        mirror=mirror,
        synthetic_vocab=synthetic_vocab,
        synthetic_sequences=synthetic_sequences,
    )
    with ui.progress_bars(not json) as progress:
        ds = prepare(name, opts, name=as_name, home=home, out=out, progress=progress, overwrite=overwrite)
    stats = ds.statistics()
    if json:
        ui.print_json(
            {
                "name": ds.name,
                "task": ds.task,
                "path": str(ds.path),
                "fingerprint": ds.fingerprint(),
                "statistics": stats,
                "extra": ds.extra,
            }
        )
        return
    rows = {k: v for k, v in stats.items() if k != "splits"}
    for split, s in stats["splits"].items():
        rows[f"{split} sequences / tokens"] = f"{s['sequences']} / {s['tokens']}"
    ui.stdout.print(ui.kv_table(f"{ds.name} ({ds.task}) -> {ds.path}", rows))


# ------------------------------------------------------------------ shared options
MaxLen = Annotated[int | None, typer.Option(help="Model context length (default: the model's).")]
DModel = Annotated[int | None, typer.Option(help="Model width (default: the model's).")]
NLayers = Annotated[int | None, typer.Option(help="Number of layers (default: the model's).")]
NHeads = Annotated[int | None, typer.Option(help="Attention heads (Transformer models).")]
Dropout = Annotated[float | None, typer.Option(help="Dropout rate (default: the model's).")]
Lr = Annotated[float, typer.Option(help="Adam learning rate.")]
WeightDecay = Annotated[float, typer.Option(help="Adam (L2) weight decay.")]
BatchSize = Annotated[int, typer.Option(help="Sequences per batch.")]
MaxSteps = Annotated[int, typer.Option(help="Most optimizer steps.")]
Patience = Annotated[int, typer.Option(help="Validations without improvement before stopping (0 = never).")]
EvalEvery = Annotated[int, typer.Option(help="Steps between validations (0 = once per epoch, at least 10).")]
Metric = Annotated[str, typer.Option(help="Validation metric for early stopping (default: xent / ppl_corpus).")]
Device = Annotated[str, typer.Option(help="cpu, cuda or cuda:N (checked before any work).")]
NProc = Annotated[
    int, typer.Option(help="Run as N ranks on this machine (torch.distributed; under torchrun leave it at 1).")
]
Oversubscribe = Annotated[
    bool, typer.Option("--oversubscribe", help="Allow --nproc above the cores this process may use (CPU ranks).")
]
RankTimeout = Annotated[
    float, typer.Option(help="Seconds a rank waits for the others before the job stops (several ranks only).")
]
Model = Annotated[str | None, typer.Option(help="Model: sasrec, gru4rec, fmlp (rec); transformer, rnn (lm).")]


def _overrides(
    max_len: int | None, d_model: int | None, n_layers: int | None, n_heads: int | None, dropout: float | None
) -> dict:
    return {"max_len": max_len, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "dropout": dropout}


def _train_config(
    lr: float,
    weight_decay: float,
    batch_size: int,
    max_steps: int,
    patience: int,
    eval_every: int,
    metric: str,
    seed: int,
) -> TrainConfig:
    return TrainConfig(
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        max_steps=max_steps,
        patience=patience,
        eval_every=eval_every,
        metric=metric,
        seed=seed,
    )


def _model_name(model: str | None, task: str) -> str:
    return model or DEFAULT_MODEL[task]


def _curve_table(title: str, curve: list[dict], metric: str) -> None:
    rows = [[p["step"], p["epoch"], p["train_loss"], p[metric], p["elapsed"]] for p in curve]
    ui.stdout.print(ui.grid(title, ["step", "epoch", "train loss", f"valid {metric}", "seconds"], rows))


@app.command("trajectories")
@ui.handle_errors
def trajectories_cmd(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Prepared dataset: a name in the workspace or a directory.")],
    model: Model = None,
    runs: Annotated[int, typer.Option(help="Training runs from independent random initializations.")] = 5,
    every: Annotated[int, typer.Option(help="Save a checkpoint every this many steps (and at the end).")] = 50,
    max_len: MaxLen = None,
    d_model: DModel = None,
    n_layers: NLayers = None,
    n_heads: NHeads = None,
    dropout: Dropout = None,
    lr: Lr = 1e-3,
    weight_decay: WeightDecay = 0.0,
    batch_size: BatchSize = 128,
    max_steps: MaxSteps = 500,
    patience: Patience = 0,
    eval_every: EvalEvery = 0,
    metric: Metric = "",
    out: Annotated[Path | None, typer.Option(help="Directory (default HOME/trajectories/DATASET/MODEL).")] = None,
    resume: Annotated[bool, typer.Option(help="Keep the runs an interrupted job finished; train the rest.")] = False,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    nproc: NProc = 1,
    oversubscribe: Oversubscribe = False,
    rank_timeout: RankTimeout = DEFAULT_RANK_TIMEOUT,
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    preset: session.Preset = None,
    plan: session.Plan = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
) -> None:
    """Train R runs of a model on the real data, keeping checkpoints along the way (Omega)."""
    launch.check_nproc(nproc, device, oversubscribe)
    if nproc > 1:
        raise typer.Exit(launch.spawn(nproc, rank_timeout))
    ds = resolve_dataset(dataset, home)
    opts = session.apply_preset(
        ctx,
        preset,
        ds.task,
        "trajectories",
        {**locals(), "model_overrides": _overrides(max_len, d_model, n_layers, n_heads, dropout)},
    )
    name = _model_name(opts["model"], ds.task)
    target = out or trajectories_dir(ds.name, name, home)
    cfg = _train_config(
        opts["lr"], opts["weight_decay"], opts["batch_size"], opts["max_steps"], patience, eval_every, metric, seed
    )
    args = (ds, name, opts["runs"], opts["every"], cfg)
    if plan:  # the projection alone, before any rank is started
        ui.announce_plan(plan_trajectories(*args, opts["model_overrides"], opts["device"]), True, json)
    with (
        launch.output_claim(plan, lambda: claim_omega(target, overwrite, ds.path)),
        launch.rank_scope(opts["device"], rank_timeout) as collective,
    ):
        cost = plan_trajectories(*args, opts["model_overrides"], opts["device"])
        preface = ui.announce_plan(cost, False, json) if collective.rank == 0 else None
        with ui.progress_bars(not json and collective.rank == 0, preface=preface) as progress:
            manifest = train_trajectories(
                *args,
                target,
                opts["model_overrides"],
                opts["device"],
                progress,
                overwrite=overwrite,
                resume=resume,
                collective=collective,
            )
    if collective.rank != 0:
        return  # rank 0 reports for the job
    if json:
        ui.print_json(
            {
                "path": str(target),
                **{k: manifest[k] for k in ("model", "runs", "every", "summaries", "threads")},
                "checkpoints": len(manifest["checkpoints"]),
                "plan": cost.to_dict(),
            }
        )
        return
    rows = [
        [s["run"], s["steps"], s["best_metric"], s["wall_seconds"], s["sequences_per_second"]]
        for s in manifest["summaries"]
    ]
    metric_name = manifest["summaries"][0]["metric"]
    ui.stdout.print(
        ui.grid(
            f"Omega: {len(manifest['checkpoints'])} checkpoints of {name} -> {target}",
            ["run", "steps", f"best valid {metric_name}", "seconds", "seq/s"],
            rows,
        )
    )


@app.command("train-student")
@ui.handle_errors
def train_student_cmd(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Prepared dataset: a name in the workspace or a directory.")],
    data: Annotated[str, typer.Option(help="full, random:N, head:N, or a Farzi Data bundle (*.safetensors).")] = "full",
    model: Model = None,
    discrete: Annotated[
        bool, typer.Option(help="Bundle: train on token ids sampled from it, not on distributions.")
    ] = False,
    max_len: MaxLen = None,
    d_model: DModel = None,
    n_layers: NLayers = None,
    n_heads: NHeads = None,
    dropout: Dropout = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (default 1e-3, or the bundle's recipe).")] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="Adam (L2) weight decay (default 0, or the bundle's recipe).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Sequences per batch (default 128, or the bundle's recipe).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Most optimizer steps (default 2000, or the recipe).")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Validations without improvement before stopping (0 = never; default 10).")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Steps between validations (0 = once per epoch, at least 10; default 0).")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Validation metric for early stopping (default: xent / ppl_corpus).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Directory (default HOME/models/DATASET/MODEL-DATA-sSEED).")] = None,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    preset: session.Preset = None,
    plan: session.Plan = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
) -> None:
    """Train a model from scratch on the full data, a sample of it, or Farzi Data."""
    ds = resolve_dataset(dataset, home)
    opts = session.apply_preset(
        ctx,
        preset,
        ds.task,
        "train-student",
        {**locals(), "model_overrides": _overrides(max_len, d_model, n_layers, n_heads, dropout)},
    )
    model, device = opts["model"], opts["device"]
    name = _model_name(model, ds.task)
    label = parse_spec(data).label().replace(":", "-")
    target = out or models_dir(ds.name, home) / f"{name}-{label}-s{seed}"
    # flags the user set win; on a bundle the rest come from its recipe, elsewhere from the defaults
    given = {k: opts[k] for k in ("lr", "weight_decay", "batch_size", "max_steps", "patience", "eval_every")}
    given["metric"] = metric
    defaults = TrainConfig()  # lr 1e-3, no weight decay, batch 128, 2000 steps, patience 10, per-epoch eval
    values = {k: (getattr(defaults, k) if v is None else v) for k, v in given.items()}
    cfg = _train_config(seed=seed, **values)
    fills = {k for k, x in given.items() if x is None}
    if preset is not None:  # the preset's values yield to a bundle's recipe on these
        fills |= {k for k in RECIPE_OVER_PRESET if not session.given(ctx, k)}
    with launch.output_claim(plan, lambda: claim_model(target, overwrite, ds.path, data)):
        cost = plan_student(ds, name, data, cfg, opts["model_overrides"], discrete, device, fills)
        preface = ui.announce_plan(cost, plan, json)
        with ui.progress_bars(not json, preface=preface) as progress:
            result, info = train_student(
                ds,
                name,
                data,
                cfg,
                target,
                opts["model_overrides"],
                discrete=discrete,
                device=device,
                progress=progress,
                overwrite=overwrite,
                recipe_fills=fills,
            )
    if json:
        ui.print_json(
            {
                "path": str(target),
                "model": name,
                "data": info["data"],
                "result": info["result"],
                "curve": info["curve"],
                "threads": info["threads"],
                "plan": cost.to_dict(),
            }
        )
        return
    _curve_table(f"{name} on {data} -> {target}", result.curve, result.metric)
    ui.stdout.print(ui.kv_table("result", info["result"]))


@app.command("eval")
@ui.handle_errors
def eval_cmd(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A model directory or .safetensors file.")],
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the one the model was trained on).")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Cutoffs for HR@k / nDCG@k (repeatable).")] = None,
    mask_context: Annotated[bool, typer.Option(help="Exclude the user's context items from the ranking.")] = True,
    stratify: Annotated[str | None, typer.Option(help="'popularity': metrics per popularity decile.")] = None,
    device: Device = "cpu",
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    threads: session.Threads = None,
) -> None:
    """Evaluate a trained model on a split of its dataset."""
    torch.manual_seed(seed)
    dev = resolve_device(device)
    ks = tuple(sorted(set(k))) if k else (10, 100)
    if any(x < 1 for x in ks):
        raise ui.fail("--k must be at least 1")
    ckpt = load_checkpoint(model_path, device=dev)
    ds = resolve_dataset(dataset or ckpt.dataset["name"], home)
    check_dataset(ckpt.dataset, ds, "model")
    metrics = evaluate(ckpt.model, ds, split, ks=ks, mask_context=mask_context, stratify=stratify, device=dev)
    if json:
        ui.print_json({"model": str(ckpt.path), "model_name": ckpt.model_name, "dataset": ds.name, **metrics})
        return
    render_metrics(f"{ckpt.model_name} on {ds.name} / {split}", metrics)


def render_metrics(title: str, metrics: dict) -> None:
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    ui.stdout.print(ui.kv_table(title, flat))
    for key, rows in (metrics.get("strata") or {}).items():
        names = [c for c in rows[0] if c not in ("decile", "range")] if rows else []
        for r in rows:
            names = [c for c in r if c not in ("decile", "range")] or names
        table_rows = [[r["decile"], str(r.get("range", "")), *[r.get(c, "") for c in names]] for r in rows]
        ui.stdout.print(
            ui.grid(f"by {key.replace('_', ' ')} decile (1 = least)", ["decile", "range", *names], table_rows)
        )


# ------------------------------------------------------------------ distill
# Options named after DistillConfig's fields take their default and help from it (one source of truth);
# tests/cli/test_distill_options.py checks that every field has its option.
_DISTILL = DistillConfig()
_DISTILL_HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(DistillConfig)}
# fields with an option of the same name; the rest: mu, xi (--budget), model (--model), model_overrides
# (--max-len, --d-model, --n-layers, --n-heads)
DISTILL_OPTION_FIELDS = tuple(
    f.name for f in dataclasses.fields(DistillConfig) if f.name not in ("mu", "xi", "model", "model_overrides")
)


def _d(name: str) -> typer.models.OptionInfo:
    return typer.Option(help=_DISTILL_HELP[name])


@app.command("distill")
@ui.handle_errors
def distill_cmd(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Prepared dataset: a name in the workspace or a directory.")],
    budget: Annotated[str, typer.Option(help="MUxXI: number of synthetic sequences x their length.")] = "50x50",
    latent_dim: Annotated[int, _d("latent_dim")] = _DISTILL.latent_dim,
    tau: Annotated[float, _d("tau")] = _DISTILL.tau,
    inner_steps: Annotated[int, _d("inner_steps")] = _DISTILL.inner_steps,
    inner_lr: Annotated[float, _d("inner_lr")] = _DISTILL.inner_lr,
    inner_optimizer: Annotated[InnerOptimizerName, _d("inner_optimizer")] = _DISTILL.inner_optimizer,
    inner_state: Annotated[InnerState, _d("inner_state")] = _DISTILL.inner_state,
    inner_momentum: Annotated[float, _d("inner_momentum")] = _DISTILL.inner_momentum,
    inner_weight_decay: Annotated[float, _d("inner_weight_decay")] = _DISTILL.inner_weight_decay,
    outer_steps: Annotated[int, _d("outer_steps")] = _DISTILL.outer_steps,
    outer_lr: Annotated[float, _d("outer_lr")] = _DISTILL.outer_lr,
    outer_weight_decay: Annotated[float, _d("outer_weight_decay")] = _DISTILL.outer_weight_decay,
    syn_batch: Annotated[int, _d("syn_batch")] = _DISTILL.syn_batch,
    real_batch: Annotated[int, _d("real_batch")] = _DISTILL.real_batch,
    meta_batch: Annotated[int, _d("meta_batch")] = _DISTILL.meta_batch,
    meta_grad: Annotated[MetaGrad, _d("meta_grad")] = _DISTILL.meta_grad,
    segment: Annotated[int, _d("segment")] = _DISTILL.segment,
    objective: Annotated[Objective, _d("objective")] = _DISTILL.objective,
    mtt_offset: Annotated[int, _d("mtt_offset")] = _DISTILL.mtt_offset,
    start_weighting: Annotated[StartWeighting, _d("start_weighting")] = _DISTILL.start_weighting,
    omega_runs: Annotated[int, _d("omega_runs")] = _DISTILL.omega_runs,
    omega_min_step: Annotated[int, _d("omega_min_step")] = _DISTILL.omega_min_step,
    omega_max_step: Annotated[int, _d("omega_max_step")] = _DISTILL.omega_max_step,
    grad_clip: Annotated[float, _d("grad_clip")] = _DISTILL.grad_clip,
    init: Annotated[Init, _d("init")] = _DISTILL.init,
    init_windows: Annotated[InitWindows, _d("init_windows")] = _DISTILL.init_windows,
    init_mix: Annotated[float, _d("init_mix")] = _DISTILL.init_mix,
    init_scale: Annotated[float, _d("init_scale")] = _DISTILL.init_scale,
    init_sharpness: Annotated[float, _d("init_sharpness")] = _DISTILL.init_sharpness,
    learn_tau: Annotated[bool, _d("learn_tau")] = _DISTILL.learn_tau,
    learn_inner_lr: Annotated[bool, _d("learn_inner_lr")] = _DISTILL.learn_inner_lr,
    recipe_lr: Annotated[float, _d("recipe_lr")] = _DISTILL.recipe_lr,
    recipe_weight_decay: Annotated[float, _d("recipe_weight_decay")] = _DISTILL.recipe_weight_decay,
    recipe_steps: Annotated[int, _d("recipe_steps")] = _DISTILL.recipe_steps,
    recipe_batch: Annotated[int, _d("recipe_batch")] = _DISTILL.recipe_batch,
    select_every: Annotated[int, _d("select_every")] = _DISTILL.select_every,
    trajectories: Annotated[
        Path | None, typer.Option(help="Omega directory (default: HOME/trajectories/DATASET/MODEL if it exists).")
    ] = None,
    model: Model = None,
    max_len: MaxLen = None,
    d_model: DModel = None,
    n_layers: NLayers = None,
    n_heads: NHeads = None,
    checkpoint_every: Annotated[int, typer.Option(help="Save the run state every N outer steps (for --resume).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run saved beside --out.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Bundle path (default HOME/bundles/DATASET/farzi-MUxXI-sSEED.safetensors).")
    ] = None,
    overwrite: Overwrite = False,
    device: Annotated[str, _d("device")] = _DISTILL.device,
    nproc: NProc = 1,
    oversubscribe: Oversubscribe = False,
    rank_timeout: RankTimeout = DEFAULT_RANK_TIMEOUT,
    seed: Seed = _DISTILL.seed,
    home: Home = None,
    json: Json = False,
    preset: session.Preset = None,
    plan: session.Plan = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
) -> None:
    """Distill a prepared dataset into Farzi Data (a farzi-data v1 bundle)."""
    given = dict(locals())
    launch.check_nproc(nproc, device, oversubscribe)
    if nproc > 1:
        raise typer.Exit(launch.spawn(nproc, rank_timeout))
    ds = resolve_dataset(dataset, home)
    given["model_overrides"] = _overrides(max_len, d_model, n_layers, n_heads, None)
    given = session.apply_preset(ctx, preset, ds.task, "distill", given)
    mu, xi = parse_budget(given["budget"])
    model = given["model"]
    name = _model_name(model, ds.task)
    if trajectories is None and objective is not Objective.mm:
        guess = trajectories_dir(ds.name, name, home)
        trajectories = guess if (guess / "manifest.json").is_file() else None
    overrides = given["model_overrides"]
    cfg = DistillConfig(
        mu=mu,
        xi=xi,
        model=model or "",
        model_overrides={k: v for k, v in overrides.items() if v is not None},
        **{k: given[k] for k in DISTILL_OPTION_FIELDS},
    )
    cfg.validate(ds)  # settings and device first, then the output, then the cost probe
    target = out or bundles_dir(ds.name, home) / f"farzi-{mu}x{xi}-s{seed}.safetensors"
    resume_from = target if resume else None  # a resumed run projects only the steps it has left
    if plan:  # the projection alone, before any rank is started
        ui.announce_plan(plan_distill(ds, cfg, trajectories, resume_from=resume_from), True, json)
    with (
        launch.output_claim(plan, lambda: claim_bundle(target, overwrite, ds.path, trajectories)),
        launch.rank_scope(device, rank_timeout) as collective,
    ):
        cost = plan_distill(ds, cfg, trajectories, resume_from=resume_from)
        preface = ui.announce_plan(cost, False, json) if collective.rank == 0 else None
        with ui.progress_bars(not json and collective.rank == 0, preface=preface) as progress:
            result = distill(
                ds,
                cfg,
                target,
                trajectories=trajectories,
                checkpoint_every=checkpoint_every,
                resume=resume,
                progress=progress,
                overwrite=overwrite,
                collective=collective,
            )
    if collective.rank != 0:
        return  # rank 0 reports for the job
    info = {
        "bundle": str(result.path),
        "log": str(result.log_path),
        "budget": f"{mu}x{xi}",
        "trajectories": str(trajectories) if trajectories else None,
        **result.summary,
    }
    if json:
        ui.print_json({**info, "plan": cost.to_dict()})
        return
    ui.stdout.print(ui.kv_table("Farzi Data", info))


@app.command("inspect")
@ui.handle_errors
def inspect_cmd(
    bundle: Annotated[Path, typer.Argument(help="A Farzi Data bundle (*.safetensors).")],
    dataset: Annotated[str | None, typer.Option(help="Dataset to check against and take item titles from.")] = None,
    top_k: Annotated[int, typer.Option(help="Tokens shown per position.")] = 3,
    sequences: Annotated[int, typer.Option(help="Sequences shown.")] = 3,
    positions: Annotated[int, typer.Option(help="Positions shown per sequence.")] = 10,
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    threads: session.Threads = None,
) -> None:
    """Show a Farzi Data bundle: metadata, budget, entropy, top tokens, and a validity verdict."""
    for flag, value in (("--top-k", top_k), ("--sequences", sequences), ("--positions", positions)):
        if value < 0:
            raise ui.fail(f"{flag} {value} must not be negative; pass e.g. {flag} 3")
    ds = resolve_dataset(dataset, home) if dataset else None
    report = inspect_bundle(bundle, ds, top_k=top_k, sequences=sequences, positions=positions)
    if json:
        ui.print_json(report)
    else:
        render_inspect(report)
    if not report["valid"]:
        print(f"error: {report['verdict']}", file=sys.stderr)
        raise typer.Exit(2)


def render_inspect(report: dict) -> None:
    if not report["valid"]:
        return
    rows = {
        "verdict": report["verdict"],
        "format": report["format"],
        "task": report["task"],
        "budget (mu x xi)": report["budget"],
        "latent": report["shapes"]["latent"],
        "decoder": report["shapes"]["decoder"],
        "tau": report["tau"],
        "dataset": f"{report['dataset'].get('name')} ({str(report['dataset'].get('fingerprint'))[:12]})",
        "teacher": f"{report['teacher']['model']} ({report['teacher']['checkpoints']} checkpoints)",
        "created": report["created"],
        "package": report["package"].get("version"),
    }
    if "share" in report:
        rows["share of sequences"] = f"{100 * report['share']['sequences']:.2f} %"
        rows["share of tokens"] = f"{100 * report['share']['tokens']:.2f} %"
    ent = report["entropy"]
    rows["entropy mean / max (nats)"] = f"{ent['mean']} / {ent['max_possible']}"
    recipe = report.get("recipe")
    if recipe:
        rows["recipe"] = ", ".join(f"{k} {v}" for k, v in sorted(recipe.items()))
    start = (report.get("history") or {}).get("init")
    if start:
        rows["initialization"] = start["init"] + (f", {start['windows']} windows" if "windows" in start else "")
    selection = (report.get("history") or {}).get("selection")
    if selection:
        rows["selected outer step"] = f"{selection['selected_step']} (by validation {selection['metric']})"
    ui.stdout.print(ui.kv_table(f"Farzi Data: {report['path']}", rows))
    stages = ((report.get("history") or {}).get("log") or {}).get("stages")
    if stages:
        table = [
            [
                f"{s['checkpoint_steps'][0]}-{s['checkpoint_steps'][1]}",
                s["starts"],
                s["real_loss_delta_mean"],
                f"{100 * s['worse_share']:.0f} %",
                s["grad_norm_median"],
            ]
            for s in stages
        ]
        cols = ["start checkpoint steps", "starts", "real loss after - before", "worse", "median meta-grad norm"]
        ui.stdout.print(ui.grid("distillation log by checkpoint stage", cols, table))
    pos = ent["per_position"]
    ui.stdout.print("entropy per position: " + " ".join(f"{x:.2f}" for x in pos))
    for i, seq in enumerate(report["examples"]):
        depth = len(seq[0]) if seq else 0
        rows = [[j, *[f"{seq[j][r]['token']} ({seq[j][r]['p']:.2f})" for r in range(depth)]] for j in range(len(seq))]
        ui.stdout.print(
            ui.grid(f"sequence {i}: top tokens per position", ["pos", *[f"top {r + 1}" for r in range(depth)]], rows)
        )


@app.command("export")
@ui.handle_errors
def export_cmd(
    bundle: Annotated[Path, typer.Argument(help="A Farzi Data bundle (*.safetensors).")],
    to: Annotated[str, typer.Option(help=f"Format: {', '.join(FORMATS)}.")] = "jsonl",
    samples: Annotated[int, typer.Option(help="Decoded sequences per synthetic sequence (--decode sample).")] = 1,
    decode: Annotated[str, typer.Option(help=f"{' or '.join(DECODINGS)}: most probable or sampled tokens.")] = "argmax",
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: beside the bundle, the format's suffix).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset to take the vocabulary from (bundles written without one).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file that is not a previous export.")] = False,
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
) -> None:
    """Write Farzi Data as discrete sequences (words, or user/item/position rows) for other tools."""
    ds = resolve_dataset(dataset, home) if dataset else None
    cfg = ExportConfig(to=to, decode=decode, samples=samples, seed=seed, overwrite=overwrite)
    with ui.progress_bars(not json) as progress:
        result = export_bundle(bundle, cfg, out=out, dataset=ds, progress=progress)
    prov = result.provenance
    if json:
        ui.print_json({"path": str(result.path), "sidecar": str(result.sidecar), **prov})
        return
    rows = {
        "task": prov["task"],
        "format": to,
        "decode": decode if decode == "argmax" else f"sample (seed {seed})",
        "samples per sequence": samples,
        "budget (mu x xi)": prov["bundle"]["budget"],
        **{k.replace("_", " "): v for k, v in prov["counts"].items()},
        "provenance": str(result.sidecar),
    }
    if to == "txt" and prov["task"] == "lm":
        rows["read back"] = f"farzictl prepare text --train {result.path}"
    elif to in ("csv", "parquet") and prov["task"] == "rec":
        rows["read back"] = (
            f"farzictl prepare interactions --path {result.path} --user-col user --item-col item --time-col position"
        )
    ui.stdout.print(ui.kv_table(f"Export: {bundle} -> {result.path}", rows))


@app.command("demo")
@ui.handle_errors
def demo_cmd(
    task: Annotated[str, typer.Option(help="lm, rec, or both.")] = "both",
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    plan: session.Plan = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
) -> None:
    """Run the whole pipeline on the embedded synthetic datasets and compare Farzi Data with samples."""
    tasks = {"lm": ("lm",), "rec": ("rec",), "both": ("lm", "rec")}.get(task)
    if tasks is None:
        raise ui.fail(f"unknown --task {task!r}; use lm, rec or both")
    cost = plan_demo(seed, tasks)
    with ui.progress_bars(not json, preface=ui.announce_plan(cost, plan, json)) as progress:
        result = run_demo(home, seed, tasks, progress)
    if json:
        ui.print_json({**result, "plan": cost.to_dict()})
        return
    for name, res in result["tasks"].items():
        metrics = list(TASKS[name].metrics)
        rows = [
            [r["data"], r["sequences"], r["tokens"], *[r[m] for m in metrics], r["train_seconds"]] for r in res["rows"]
        ]
        ref = res["reference"]
        rows.append([ref["label"], "", "", *[ref["value"] if m == ref["metric"] else "" for m in metrics], ""])
        timings = ", ".join(f"{k} {v:.0f}s" for k, v in res["timings"].items())
        ui.stdout.print(
            ui.grid(
                f"{res['dataset']}: test split ({res['train_sequences']} training sequences)",
                ["data", "sequences", "tokens", *metrics, "train s"],
                rows,
                caption=timings,
            )
        )
    ui.stdout.print(f"plot: {result['plot']}")


def resolve_dataset(arg: str, home: Path | None):
    """A prepared dataset by directory path or by name in the workspace."""
    path = Path(arg)
    if (path / "manifest.json").is_file():
        return load_prepared(path)
    if "/" in arg or arg.startswith("."):
        return load_prepared(path)  # raises a clear error
    check_name(arg, "dataset name")
    where = dataset_dir(arg, home)
    if not (where / "manifest.json").is_file():
        raise DataError(
            f"no prepared dataset named {arg!r} in {where.parent}",
            f"run farzictl prepare {arg} first, or pass a dataset directory",
        )
    return load_prepared(where)


@functools.cache
def _command() -> Any:  # a click Command (typer vendors click from 0.29 on)
    """The click command Typer builds from ``app`` (built once: Typer would rebuild it on every call)."""
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; usage errors become one line and exit 2."""
    session.reset()
    threads = torch.get_num_threads()  # --threads acts on this call only (in-process callers keep theirs)
    launch.ARGV = list(sys.argv[1:] if argv is None else argv)
    try:
        with no_stray_torch_cache():
            code = _command().main(args=argv, prog_name="farzictl", standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - usage errors from typer's click
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            where = f"run '{ctx.command_path} --help'" if ctx is not None else "run 'farzictl --help'"
            msg = " ".join(str(exc.format_message()).split()).replace("Value error, ", "").rstrip(".")
            print(f"error: {msg}; {where}", file=sys.stderr)
            sys.exit(2)
        raise
    finally:
        torch.set_num_threads(threads)
        session.reset()
    sys.exit(code if isinstance(code, int) else 0)


def entry() -> None:
    """The ``farzictl`` script and ``python -m farzictl``: :func:`main`, and a rank of a job (``--nproc``,
    torchrun) leaves without the interpreter's teardown. A process group's worker threads can abort
    a process there (SIGABRT, "terminate called without an active exception") after the command has
    ended and said what it had to, turning a clean exit or one error line into a rank that "died".
    The command left its process group already (:func:`farzictl.launch.rank_scope`)."""
    try:
        rank = launched()
    except FarziError:
        rank = False  # a malformed WORLD_SIZE or RANK: the command reports it in one line
    if not rank:
        main()
        return
    code: Any = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)  # sys.exit("message"), as the interpreter prints it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
