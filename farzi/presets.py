"""Named settings (presets): the benchmark protocols, for users to ask for by name.

``PROTOCOLS`` is the single source of the benchmark protocols' settings: ``bench`` reads its
``ml100k-cpu``, ``ptb-cpu`` and ``ml100k-paper`` settings from here, and ``farzictl ... --preset
cpu|paper`` fills a command's options from them (options given on the command line win).

* ``cpu``: the CPU protocol (minutes to an hour on 2 cores): ``ml100k-cpu`` for recommendation
  (``beauty-cpu`` on Amazon Beauty, whose 12k items need a sparse summary), ``ptb-cpu`` for
  language modeling;
* ``paper``: the paper's ML-100k setting (its Table 4), a GPU run (``device`` ``cuda``);
  recommendation only.

:func:`preset_values` turns a protocol into a partial config of one command (trajectories, distill,
train-student), by the flat names of its settings (``model_overrides`` a mapping of model settings,
some without an option of their own, e.g. ``d_ff``); :func:`command_settings` merges defaults,
preset, a bundle's recipe and flags in one place.
"""

from __future__ import annotations

import copy
from typing import Any

from farzi.errors import ConfigError
from farzi.settings import Merged, merge, settings_of

PRESETS = ("cpu", "paper")
PRESET_COMMANDS = ("trajectories", "distill", "train-student")

# Under a preset, a student on a bundle still takes these from the recipe the bundle records (the
# benchmarks' students do the same): the learning rate and weight decay its data was distilled and
# measured for.
RECIPE_OVER_PRESET = ("lr", "weight_decay")


def recipe_over_preset(settings: dict[str, Any]) -> tuple[str, ...]:
    """What a student on a bundle takes from its recipe under a protocol's ``settings``: :data:`RECIPE_OVER_PRESET`, or
    the protocol's own ``recipe_over_preset`` (beauty-cpu: the batch and steps too, sized for its bundles)."""
    return tuple(settings.get("recipe_over_preset", RECIPE_OVER_PRESET))


# The protocols' settings. bench/experiments/sample_efficiency.py reads them from here.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "ml100k-cpu": {
        "source": "ml-100k",
        "source_dir": "ml-100k",
        "model": "sasrec",
        "model_overrides": {"max_len": 50, "d_model": 64, "n_layers": 2, "dropout": 0.2},
        "trajectories": {"runs": 3, "every": 20, "train": {"lr": 2e-3, "batch_size": 128, "max_steps": 240}},
        "budgets": [50],
        "curve_budgets": [10, 25, 50, 100, 200, 400],  # bench budget-curves-ml100k (755 training users)
        "distill_seeds": 2,
        "xi": 50,
        "claim_budget": 50,
        "distill": {
            "latent_dim": 8,
            "tau": 1.0,
            "inner_steps": 10,
            "inner_lr": 0.01,
            "outer_steps": 100,
            "outer_lr": 0.01,
            "syn_batch": 16,
            "real_batch": 128,
            "init": "teacher",
            "init_mix": 0.2,
            "recipe_lr": 1e-3,
            "recipe_steps": 600,
            "recipe_batch": 128,
        },
        # students select their best state on validation cross-entropy (farzi.evaluate.default_metric)
        "student": {"lr": 1e-3, "batch_size": 128, "max_steps": 600, "patience": 15, "eval_every": 10},
        "metrics": ["hr@10", "hr@100", "ndcg@10", "ndcg@100", "auc"],
    },
    "ptb-cpu": {
        "source": "ptb-offline",
        "source_dir": "ptb",
        "model": "transformer",
        "model_overrides": {"max_len": 64, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256, "dropout": 0.2},
        "trajectories": {"runs": 3, "every": 40, "train": {"lr": 2e-3, "batch_size": 64, "max_steps": 480}},
        "budgets": [40],
        "curve_budgets": [10, 20, 40, 100, 200, 400],  # bench budget-curves-ptb (3,370 training sentences)
        "distill_seeds": 2,
        "xi": 50,
        "claim_budget": 40,
        "distill": {
            "latent_dim": 8,
            "tau": 1.0,
            "inner_steps": 10,
            "inner_lr": 0.01,
            "outer_steps": 150,
            "outer_lr": 0.01,
            "syn_batch": 16,
            "real_batch": 128,
            "init": "teacher",
            "init_mix": 0.0,  # the teacher's prediction alone: test ppl -1.9 [-3.1, -0.5] (bench fidelity-levers-ptb)
            "recipe_lr": 1e-3,  # students on the bundle: better than 2e-3 on validation (bench fidelity-levers-ptb)
            # and with Adam weight decay 1e-3: validation ppl -4.8 [-7.3, -2.9] (bench fidelity-levers-ptb),
            # test -3.8 [-4.7, -3.0] (bench sample-efficiency-ptb, paired with the run without it)
            "recipe_weight_decay": 1e-3,
            "recipe_steps": 1000,
            "recipe_batch": 64,
        },
        # max_steps 3000: at 1000 the full-data students kept their best state at step 880-960 with
        # validation still falling; patience ends every kind of data's students well before 3000
        "student": {"lr": 2e-3, "batch_size": 64, "max_steps": 3000, "patience": 10, "eval_every": 40},
        "metrics": ["ppl_corpus", "ppl_sentence", "accuracy"],
    },
    # the paper's ML-100k setting (its Table 4 as summarized in ../shared/DESIGN.md): a GPU run
    "ml100k-paper": {
        "source": "ml-100k",
        "source_dir": "ml-100k",
        "model": "sasrec",
        "device": "cuda",
        "model_overrides": {"max_len": 150, "d_model": 64, "n_layers": 2, "dropout": 0.2},
        "trajectories": {"runs": 5, "every": 50, "train": {"lr": 1e-3, "batch_size": 128, "max_steps": 1000}},
        "budgets": [50],
        "xi": 150,
        "claim_budget": 50,
        "distill": {
            "latent_dim": 8,
            "tau": 1.0,
            "inner_steps": 100,
            "inner_lr": 0.01,
            "outer_steps": 4000,
            "outer_lr": 0.01,
            "syn_batch": 0,
            "real_batch": 256,
            "init": "teacher",
        },
        "student": {"lr": 1e-3, "batch_size": 128, "max_steps": 3000, "patience": 20, "eval_every": 20},
        "metrics": ["hr@10", "hr@100", "ndcg@10", "ndcg@100", "auc"],
    },
}

# Amazon Beauty (22,363 users, 12,101 items, 8.9 items a user): ml100k-cpu's model, Omega and 50x50 budget, with what
# its catalog needs to fit 90 min on 2 cores: a sparse summary (K = 64 items a position: an outer step at 12k items
# 0.6x a dense one, bench vocab-scaling) and 60 outer steps; students on a bundle take its recipe's batch and steps
# (16 of its sequences a step: 800 tokens, less than a full-data batch of 128 users' 9 items; 50 sequences a step
# cost 2.5x a full-data step at 12k items), validated every 40 steps and stopped after 5 without improvement.
# Sized to fit the time, not tuned on validation as ml100k-cpu was. Measured once, with the candidates refreshed
# every 10 outer steps (the default then, 0 since): Farzi Data below its initialization (sample-efficiency-beauty).
_ML = PROTOCOLS["ml100k-cpu"]
PROTOCOLS["beauty-cpu"] = copy.deepcopy(_ML) | {
    "source": "amazon-beauty",
    "source_dir": "amazon-beauty",
    "curve_budgets": [10, 25, 50, 100, 200, 400],  # bench budget-curves-beauty (17,891 training users)
    "distill": _ML["distill"] | {"support": 64, "outer_steps": 60, "recipe_steps": 300, "recipe_batch": 16},
    "recipe_over_preset": ["lr", "weight_decay", "batch_size", "max_steps"],
    "student": _ML["student"] | {"patience": 5, "eval_every": 40},
}

# (preset, task) -> protocol; (preset, dataset) -> the protocol of a dataset with one of its own
_BY_TASK = {("cpu", "rec"): "ml100k-cpu", ("cpu", "lm"): "ptb-cpu", ("paper", "rec"): "ml100k-paper"}
_BY_DATASET = {("cpu", "amazon-beauty"): "beauty-cpu"}


def protocol(preset: str, task: str, dataset: str = "") -> str:
    """The protocol a preset names for a task, or for ``dataset`` where it has its own (``beauty-cpu`` for
    ``amazon-beauty`` under ``cpu``); ``ConfigError`` where there is none."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    name = _BY_DATASET.get((preset, dataset)) or _BY_TASK.get((preset, task))
    if name is None:
        raise ConfigError(
            f"there is no {preset!r} preset for {task} datasets (the paper protocol is defined for ML-100k only)",
            "use --preset cpu, or pass the settings as options",
        )
    return name


def preset_values(preset: str, task: str, command: str, dataset: str = "") -> dict[str, Any]:
    """The partial config ``preset`` gives ``command`` on a ``task`` dataset (a fresh copy), by the flat
    names of the command's settings (:func:`config_class`).

    trajectories: model, runs, every, lr, batch_size, max_steps; distill: mu and xi (the protocol's
    headline budget) and the distillation settings; train-student: the student recipe. All three:
    ``model_overrides`` and, where the protocol sets one, ``device``.
    """
    if command not in PRESET_COMMANDS:
        raise ConfigError(f"{command} takes no preset", f"use --preset with {', '.join(PRESET_COMMANDS)}")
    p = copy.deepcopy(PROTOCOLS[protocol(preset, task, dataset)])
    out: dict[str, Any] = {"model": p["model"], "model_overrides": p["model_overrides"]}
    if "device" in p:
        out["device"] = p["device"]
    if command == "trajectories":
        t = p["trajectories"]
        out.update(runs=t["runs"], every=t["every"], **t["train"])
    elif command == "distill":
        out.update(mu=p["claim_budget"], xi=p["xi"], **p["distill"])
        # the teacher settings a distillation takes (its teacher is Omega's model where there is one)
        keep = ("max_len", "d_model", "n_layers", "n_heads", "dropout")
        out["model_overrides"] = {k: v for k, v in out["model_overrides"].items() if k in keep}
    else:
        out.update(p["student"])
    return out


def config_class(command: str) -> type:
    """The config dataclass whose settings are ``command``'s options."""
    from farzi.distill.config import DistillConfig
    from farzi.student import StudentConfig
    from farzi.trajectories import TrajectoriesConfig

    return {"trajectories": TrajectoriesConfig, "distill": DistillConfig, "train-student": StudentConfig}[command]


def command_settings(
    command: str,
    task: str,
    flags: dict[str, Any],
    preset: str | None = None,
    recipe: dict[str, Any] | None = None,
    dataset: str = "",
) -> Merged:
    """The settings of one ``command`` run, merged in one place: the config's defaults, then the
    ``preset`` (a partial config), then a bundle's training ``recipe`` (train-student on a bundle;
    under a preset only what the preset leaves open and :data:`RECIPE_OVER_PRESET`), then the
    ``flags`` the user gave; with where
    each value came from; ``dataset``: the dataset's name, for a protocol of its own (:func:`protocol`).
    Nothing is checked here (the config's own validation does that)."""
    from farzi.student import RECIPE_FIELDS

    cls = config_class(command)
    given = preset_values(preset, task, command, dataset) if preset else {}
    over = recipe_over_preset(PROTOCOLS[protocol(preset, task, dataset)]) if preset else RECIPE_OVER_PRESET
    layers: list[tuple[str, dict[str, Any] | None]] = [("preset", given)]
    if recipe:  # under a preset: what it leaves open, and the learning rate and weight decay
        keys = [k for k in RECIPE_FIELDS if k in recipe and (k not in given or k in over)]
        kinds = {s.name: s.kind for s in settings_of(cls)}
        layers.append(("recipe", {k: kinds[k](recipe[k]) for k in keys}))
    layers.append(("flag", flags))
    return merge(cls, layers)
