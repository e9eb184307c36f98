"""farzictl: distill autoregressive datasets into Farzi Data.

Every command takes ``--home`` (or ``FARZI_HOME``) for the workspace, ``--seed``
for reproducibility and ``--json`` for scripts. Bad input prints one line on
stderr and exits with status 2.
"""

from __future__ import annotations

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
from farzi.audit import AuditConfig, audit_bundle, check_audit, default_out, plan_audit
from farzi.checkpoint import check_dataset, load_checkpoint
from farzi.data.prepare import SOURCES, PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.demo import TASKS, run_demo
from farzi.device import resolve_device
from farzi.distill.config import DistillConfig, Objective, parse_budget
from farzi.distill.engine import claim_bundle, distill
from farzi.distill.inspect import inspect_bundle
from farzi.distributed import DEFAULT_TIMEOUT as DEFAULT_RANK_TIMEOUT
from farzi.distributed import launched
from farzi.errors import DataError, FarziError
from farzi.evaluate import evaluate
from farzi.export import ExportConfig, export_bundle
from farzi.models import DEFAULT_MODEL
from farzi.plan import plan_demo, plan_distill, plan_student, plan_trajectories
from farzi.presets import command_settings
from farzi.settings import merge
from farzi.student import StudentConfig, claim_model, parse_spec, student_recipe, train_student
from farzi.trajectories import TrajectoriesConfig, claim_omega, train_trajectories
from farzi.workspace import bundles_dir, check_name, dataset_dir, models_dir, trajectories_dir
from farzictl import launch, options, session, ui

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


Device = Annotated[str, typer.Option(help="cpu, cuda or cuda:N (checked before any work).")]
Dataset = Annotated[str, typer.Argument(help="Prepared dataset: a name in the workspace or a directory.")]
NProc = Annotated[
    int, typer.Option(help="Run as N ranks on this machine (torch.distributed; under torchrun leave it at 1).")
]
Oversubscribe = Annotated[
    bool, typer.Option("--oversubscribe", help="Allow --nproc above the cores this process may use (CPU ranks).")
]
RankTimeout = Annotated[
    float, typer.Option(help="Seconds a rank waits for the others before the job stops (several ranks only).")
]
Resume = Annotated[bool, typer.Option(help="Keep the runs an interrupted job finished; train the rest.")]


def _preset(preset: session.PresetName | None) -> str | None:
    return preset.value if preset is not None else None


@options.config_command(app, "prepare", PrepareOptions)
def prepare_cmd(
    name: Annotated[str, typer.Argument(help=f"Dataset: {', '.join(SOURCES)}.", show_default=False)],
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
    *,
    flags: dict[str, Any],
) -> None:
    """Download or read a dataset and write it in farzi's prepared format."""
    opts = merge(PrepareOptions, [("flag", flags)]).config

    def run(progress: Any, _collective: Any) -> Any:
        return prepare(name, opts, name=as_name, home=home, out=out, progress=progress, overwrite=overwrite)

    ds, _ = launch.run_job(launch.Job(run), json_out=json)  # type: ignore[misc]
    stats = ds.statistics()
    rows = {k: v for k, v in stats.items() if k != "splits"}
    for split, sp in stats["splits"].items():
        rows[f"{split} sequences / tokens"] = f"{sp['sequences']} / {sp['tokens']}"
    info = {"name": ds.name, "task": ds.task, "path": str(ds.path), "fingerprint": ds.fingerprint()}
    launch.report(
        json,
        {**info, "statistics": stats, "extra": ds.extra},
        lambda: ui.stdout.print(ui.kv_table(f"{ds.name} ({ds.task}) -> {ds.path}", rows)),
    )


def _curve_table(title: str, curve: list[dict], metric: str) -> None:
    rows = [[p["step"], p["epoch"], p["train_loss"], p[metric], p["elapsed"]] for p in curve]
    ui.stdout.print(ui.grid(title, ["step", "epoch", "train loss", f"valid {metric}", "seconds"], rows))


@options.config_command(app, "trajectories", TrajectoriesConfig)
def trajectories_cmd(
    dataset: Dataset,
    out: Annotated[Path | None, typer.Option(help="Directory (default HOME/trajectories/DATASET/MODEL).")] = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
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
    *,
    flags: dict[str, Any],
) -> None:
    """Train R runs of a model on the real data, keeping checkpoints along the way (Omega)."""
    launch.check_nproc(nproc, flags.get("device", "cpu"), oversubscribe)  # at once; the preset's device in run_job
    ds = resolve_dataset(dataset, home)
    cfg = (merged := command_settings("trajectories", ds.task, flags, _preset(preset), dataset=ds.name)).config
    name = cfg.model or DEFAULT_MODEL[ds.task]
    target = out or trajectories_dir(ds.name, name, home)
    args = (ds, name, cfg.runs, cfg.every, cfg.train)
    job = launch.Job(
        lambda progress, collective: train_trajectories(
            *args, target, cfg.model_overrides, cfg.device, progress, overwrite, resume, collective
        ),
        cfg.device,
        lambda: plan_trajectories(*args, cfg.model_overrides, cfg.device),
        lambda: claim_omega(target, overwrite, ds.path),
        ranks=True,
    )
    done = launch.run_job(job, plan, json, nproc, oversubscribe, rank_timeout)
    if done is None:
        return  # rank 0 reports for the job
    manifest, cost = done
    summaries = manifest["summaries"]
    rows = [[s["run"], s["steps"], s["best_metric"], s["wall_seconds"], s["sequences_per_second"]] for s in summaries]
    title = f"Omega: {len(manifest['checkpoints'])} checkpoints of {name} -> {target}"
    columns = ["run", "steps", f"best valid {summaries[0]['metric']}", "seconds", "seq/s"]
    info = {k: manifest[k] for k in ("model", "runs", "every", "summaries", "threads")}
    info.update(path=str(target), checkpoints=len(manifest["checkpoints"]), plan=cost.to_dict())
    info["sources"] = merged.sources
    launch.report(json, info, lambda: ui.stdout.print(ui.grid(title, columns, rows)))


@options.config_command(app, "train-student", StudentConfig)
def train_student_cmd(
    dataset: Dataset,
    data: Annotated[str, typer.Option(help="full, random:N, head:N, or a Farzi Data bundle (*.safetensors).")] = "full",
    out: Annotated[Path | None, typer.Option(help="Directory (default HOME/models/DATASET/MODEL-DATA-sSEED).")] = None,
    overwrite: Overwrite = False,
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    preset: session.Preset = None,
    plan: session.Plan = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Train a model from scratch on the full data, a sample of it, or Farzi Data (on a bundle, the
    settings not given come from the recipe it records)."""
    ds = resolve_dataset(dataset, home)
    merged = command_settings("train-student", ds.task, flags, _preset(preset), student_recipe(data), ds.name)
    cfg, fills = merged.config, merged.from_source("recipe")
    name = cfg.model or DEFAULT_MODEL[ds.task]
    target = out or models_dir(ds.name, home) / f"{name}-{parse_spec(data).label().replace(':', '-')}-s{seed}"
    args = (ds, name, data, cfg.train)
    job = launch.Job(
        lambda progress, _: train_student(
            *args, target, cfg.model_overrides, cfg.discrete, cfg.device, progress, None, overwrite, fills
        ),
        cfg.device,
        lambda: plan_student(*args, cfg.model_overrides, cfg.discrete, cfg.device, fills),
        lambda: claim_model(target, overwrite, ds.path, data),
    )
    (result, info), cost = launch.run_job(job, plan, json)  # type: ignore[misc]
    keys = ("data", "result", "curve", "threads")
    launch.report(
        json,
        {
            "path": str(target),
            "model": name,
            **{k: info[k] for k in keys},
            "plan": cost.to_dict(),
            "sources": merged.sources,
        },
        lambda: (
            _curve_table(f"{name} on {data} -> {target}", result.curve, result.metric),
            ui.stdout.print(ui.kv_table("result", info["result"])),
        ),
    )


@app.command("eval")
@ui.handle_errors
def eval_cmd(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A model directory or .safetensors file.")],
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the one the model was trained on).")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Cutoffs for HR@k / nDCG@k (repeatable).")] = None,
    mask_context: Annotated[bool, typer.Option(help="Exclude the user's context items from the ranking.")] = True,
    stratify: Annotated[str | None, typer.Option(help="'popularity': metrics per popularity decile.")] = None,
    negatives: Annotated[
        int, typer.Option(min=0, help="Rank each target among N sampled items (papers' 100), not all (0).")
    ] = 0,
    negative_sampling: Annotated[
        session.NegativeSampling, typer.Option(help="How --negatives are drawn (seeded by --seed).")
    ] = session.NegativeSampling.uniform,
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
    metrics = evaluate(
        ckpt.model,
        ds,
        split,
        ks=ks,
        mask_context=mask_context,
        stratify=stratify,
        device=dev,
        negatives=negatives,
        negative_sampling=negative_sampling.value,
        negative_seed=seed,
    )
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
Budget = Annotated[
    str | None, typer.Option(help="MUxXI: number of synthetic sequences x their length.", show_default="50x50")
]
Trajectories = Annotated[
    Path | None, typer.Option(help="Omega directory (default: HOME/trajectories/DATASET/MODEL if it exists).")
]
BundleOut = Annotated[
    Path | None, typer.Option(help="Bundle path (default HOME/bundles/DATASET/farzi-MUxXI-sSEED.safetensors).")
]


@options.config_command(app, "distill", DistillConfig)
def distill_cmd(
    dataset: Dataset,
    budget: Budget = None,
    trajectories: Trajectories = None,
    checkpoint_every: Annotated[int, typer.Option(help="Save the run state every N outer steps (for --resume).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run saved beside --out.")] = False,
    out: BundleOut = None,
    overwrite: Overwrite = False,
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
    *,
    flags: dict[str, Any],
) -> None:
    """Distill a prepared dataset into Farzi Data (a farzi-data v1 bundle)."""
    launch.check_nproc(nproc, flags.get("device", "cpu"), oversubscribe)  # at once; the preset's device in run_job
    ds = resolve_dataset(dataset, home)
    flags.update(zip(("mu", "xi"), parse_budget(budget), strict=True) if budget is not None else ())
    merged = command_settings("distill", ds.task, flags, _preset(preset), dataset=ds.name)
    (cfg := merged.config).validate(ds)  # settings and device first, then the output, then the cost probe
    trajectories = trajectories or default_trajectories(ds, cfg, home)
    target = out or bundles_dir(ds.name, home) / f"farzi-{cfg.mu}x{cfg.xi}-s{cfg.seed}.safetensors"
    job = launch.Job(
        lambda progress, collective: distill(
            ds, cfg, target, trajectories, checkpoint_every, resume, progress, overwrite, collective
        ),
        cfg.device,
        lambda: plan_distill(ds, cfg, trajectories, resume_from=target if resume else None),  # steps left
        lambda: claim_bundle(target, overwrite, ds.path, trajectories),
        ranks=True,
    )
    done = launch.run_job(job, plan, json, nproc, oversubscribe, rank_timeout)
    if done is None:
        return  # rank 0 reports for the job
    (result, cost), where = done, str(trajectories) if trajectories else None
    info = {"bundle": str(result.path), "log": str(result.log_path), "budget": f"{cfg.mu}x{cfg.xi}"}
    info.update(trajectories=where, **result.summary)
    extra = {"plan": cost.to_dict(), "sources": merged.sources}
    launch.report(json, {**info, **extra}, lambda: ui.stdout.print(ui.kv_table("Farzi Data", info)))


def default_trajectories(ds: Any, cfg: DistillConfig, home: Path | None) -> Path | None:
    """The teacher's Omega in the workspace where one exists (an mm run needs none)."""
    if cfg.objective is Objective.mm:
        return None
    guess = trajectories_dir(ds.name, cfg.model or DEFAULT_MODEL[ds.task], home)
    return guess if (guess / "manifest.json").is_file() else None


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
        "distributions": f"sparse, {report['support']} candidates a position" if report.get("support") else "dense",
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


@options.config_command(app, "export", ExportConfig)
def export_cmd(
    bundle: Annotated[Path, typer.Argument(help="A Farzi Data bundle (*.safetensors).")],
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: beside the bundle, the format's suffix).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset to take the vocabulary from (bundles written without one).")
    ] = None,
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Write Farzi Data as discrete sequences (words, or user/item/position rows) for other tools."""
    ds = resolve_dataset(dataset, home) if dataset else None
    cfg = merge(ExportConfig, [("flag", flags)]).config
    job = launch.Job(lambda progress, _: export_bundle(bundle, cfg, out=out, dataset=ds, progress=progress))
    result, _ = launch.run_job(job, json_out=json)  # type: ignore[misc]
    prov = result.provenance
    rows = {
        "task": prov["task"],
        "format": cfg.to,
        "decode": cfg.decode if cfg.decode == "argmax" else f"sample (seed {cfg.seed})",
        "samples per sequence": cfg.samples,
        "budget (mu x xi)": prov["bundle"]["budget"],
        **{k.replace("_", " "): v for k, v in prov["counts"].items()},
        "provenance": str(result.sidecar),
    }
    if cfg.to == "txt" and prov["task"] == "lm":
        rows["read back"] = f"farzictl prepare text --train {result.path}"
    elif cfg.to in ("csv", "parquet") and prov["task"] == "rec":
        rows["read back"] = (
            f"farzictl prepare interactions --path {result.path} --user-col user --item-col item --time-col position"
        )
    launch.report(
        json,
        {"path": str(result.path), "sidecar": str(result.sidecar), **prov},
        lambda: ui.stdout.print(ui.kv_table(f"Export: {bundle} -> {result.path}", rows)),
    )


@app.command("audit")
@ui.handle_errors
def audit_cmd(
    bundle: Annotated[Path, typer.Argument(help="A Farzi Data bundle (*.safetensors).")],
    data: Annotated[
        str | None, typer.Option("--data", help="Its dataset: a name or directory (default: the one it records).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Seeded draws per synthetic sequence besides its argmax.")] = 4,
    min_copy: Annotated[int, typer.Option(help="List synthetic sequences copying a window of N+ tokens.")] = 10,
    models: Annotated[
        list[Path] | None, typer.Option("--models", help="Models trained on the bundle to attack (repeatable).")
    ] = None,
    students: Annotated[int, typer.Option(help="Students per kind of data (bundle, random:N, full); 0: none.")] = 1,
    max_steps: Annotated[int, typer.Option(help="Steps per student (0: the bundle recipe's, at most 300).")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Directory for audit.json and audit.png (default BUNDLE.audit).")
    ] = None,
    device: Device = "cpu",
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
    plan: session.Plan = False,
    threads: session.Threads = None,
    quiet: session.Quiet = False,
) -> None:
    """Privacy audit: how much of the training data a bundle copies, and how well a loss-threshold
    attack tells members from held-out sequences on students trained on it."""
    cfg = AuditConfig(samples, min_copy, students, max_steps, list(models or []), seed=seed, device=device)
    cfg.validate()
    resolve_device(device)
    ds = resolve_dataset(data or _bundle_dataset(bundle), home)
    target = out or default_out(bundle)
    check_audit(bundle, ds, cfg, target)  # every refusal before the cost probe
    job = launch.Job(
        lambda progress, _: audit_bundle(bundle, ds, cfg, target, progress),
        plan=lambda: plan_audit(bundle, ds, cfg, target),
    )
    doc, cost = launch.run_job(job, plan, json)  # type: ignore[misc]
    launch.report(json, {**doc, "out": str(target), "plan": cost.to_dict()}, lambda: render_audit(doc, target))


def _bundle_dataset(bundle: Path) -> str:
    """The dataset a bundle records: its directory where it still exists, else its name."""
    from farzi.distill.bundle import read_bundle_meta

    recorded = read_bundle_meta(bundle)[0].get("dataset") or {}
    path, name = recorded.get("path"), recorded.get("name")
    if isinstance(path, str) and (Path(path) / "manifest.json").is_file():
        return path
    if not isinstance(name, str) or not name:
        raise DataError(f"bundle {bundle} records no dataset", "pass --data with the dataset it was distilled from")
    return name


def render_audit(doc: dict[str, Any], target: Path) -> None:
    """The audit as tables: copying (synthetic against held-out), the copies found, the attack per kind of data."""
    c = doc["copying"]
    ns = c["ngrams"]
    rows = []
    for label, x in (
        ("argmax", c["synthetic"]["argmax"]),
        ("sampled", c["synthetic"]["sampled"]),
        ("held-out", c["held_out"]),
    ):
        if x:
            run = x["longest_run"]
            overlap = [f"{100 * v:.1f}" if v is not None else "—" for v in (x["ngram_overlap"][str(n)] for n in ns)]
            rows.append([label, x["sequences"], f"{run['mean']:.2f} / {run['max']}", *overlap])
    cols = ["sequences", "count", "longest run mean / max", *[f"{n}-grams %" for n in ns]]
    title = f"Copying: {doc['bundle']['budget']} bundle against {doc['dataset']['name']}'s training split"
    caption = "n-grams %: share of a sequence's n-grams found in training; held-out: test windows, never trained on"
    ui.stdout.print(ui.grid(title, cols, rows, caption=caption))
    shown = c["copies"][:10]
    copied = c["copied_training_sequences"]
    caption = f"{c['copies_total']} copies of {c['min_copy']}+ tokens, of {copied} training sequences"
    copy_rows = [[x["name"], x["length"], x["start"], x["train_id"], x["train_start"]] for x in shown]
    copy_cols = ["synthetic", "tokens copied", "at", "training user / line", "from"]
    if copy_rows:
        ui.stdout.print(ui.grid("Copies (longest first)", copy_cols, copy_rows, caption=caption))
    else:
        ui.stdout.print(f"no synthetic sequence copies a training window of {c['min_copy']}+ tokens")
    m = doc["membership"]
    if m:
        metric = m["utility_metric"]
        table = [
            [
                g["label"],
                len(g["students"]),
                g["utility"],
                f"{g['auc']['value']:.3f} [{g['auc']['lo']:.3f}, {g['auc']['hi']:.3f}]"
                + (f"; its {o['members']} users: {o['auc']['value']:.3f}" if (o := g.get("own_members")) else ""),
                f"{100 * g['tpr_at_fpr']['value']:.1f} [{100 * g['tpr_at_fpr']['lo']:.1f}, "
                f"{100 * g['tpr_at_fpr']['hi']:.1f}]",
            ]
            for g in m["groups"]
        ]
        title = (
            f"Membership inference: {m['members']['sequences']} members, {m['non_members']['sequences']} non-members"
        )
        cols = ["trained on", "students", f"test {metric}", "attack AUC [95 %]", "TPR % at 1 % FPR [95 %]"]
        ui.stdout.print(ui.grid(title, cols, table))
    for note in doc["notes"]:
        ui.stdout.print(f"note: {note}")
    ui.stdout.print(f"json: {target / 'audit.json'}\nplot: {target / doc['plot']}")


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
    job = launch.Job(lambda progress, _: run_demo(home, seed, tasks, progress), plan=lambda: plan_demo(seed, tasks))
    result, cost = launch.run_job(job, plan, json)  # type: ignore[misc]
    launch.report(json, {**result, "plan": cost.to_dict()}, lambda: render_demo(result))


def render_demo(result: dict[str, Any]) -> None:
    for name, res in result["tasks"].items():
        metrics = list(TASKS[name].metrics)
        cell = lambda r, m: f"{r[m]:.3g} [{r[f'{m}_lo']:.3g}, {r[f'{m}_hi']:.3g}]"  # noqa: E731
        rows = [
            [r["data"], r["sequences"], r["tokens"], *[cell(r, m) for m in metrics], r["train_seconds"]]
            for r in res["rows"]
        ]
        ref = res["reference"]
        rows.append([ref["label"], "", "", *[ref["value"] if m == ref["metric"] else "" for m in metrics], ""])
        timings = ", ".join(f"{k} {v:.0f}s" for k, v in res["timings"].items())
        ui.stdout.print(
            ui.grid(
                f"{res['dataset']}: test split ({res['train_sequences']} training sequences), 95 % intervals",
                ["data", "sequences", "tokens", *metrics, "train s"],
                rows,
                caption=timings,
            )
        )
        pairs = [
            [c["against"], f"{c['diff']:+.3g} [{c['lo']:+.3g}, {c['hi']:+.3g}]", c["verdict"]]
            for c in res["comparisons"]
        ]
        title = f"{res['rows'][0]['data']} minus each, {res['headline']} paired over the same test users"
        ui.stdout.print(ui.grid(title, ["against", "difference [95 % interval]", "Farzi Data is"], pairs))
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
