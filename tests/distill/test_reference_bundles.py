"""Same seeds, same bundles: the distillation engine against bundles recorded before its restructure.

The tensors under ``tests/assets/reference/`` were written by the engine as it stood at commit
beacc0b (before the split into init / objectives / outer optimizer), from the tiny fixtures below.
Each case must still give those tensors, to float tolerance (the order of some arithmetic changed).
To re-record after an intended change of behaviour: ``FARZI_RECORD_REFERENCE=1 python -m pytest
tests/distill/test_reference_bundles.py`` and say why in the commit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from farzi.distill.engine import DistillConfig, distill
from farzi.train import TrainConfig
from farzi.trajectories import train_trajectories

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "reference"
TINY_LM = {"d_model": 8, "n_layers": 1, "n_heads": 2, "max_len": 16}
TINY_REC = {"d_model": 8, "n_layers": 1, "max_len": 16}
RECORD = os.environ.get("FARZI_RECORD_REFERENCE") == "1"

# name: (dataset fixture, model, uses trajectories, config changes)
CASES: dict[str, tuple[str, str, bool, dict]] = {
    "lm-farzi-adam-teacher-reverse-wd": ("tiny_lm", "transformer", True, {"inner_weight_decay": 0.01}),
    "lm-farzi-sgd-real-checkpointed-wd": (
        "tiny_lm",
        "transformer",
        True,
        {"inner_optimizer": "sgd", "init": "real", "meta_grad": "checkpointed", "inner_weight_decay": 0.01},
    ),
    "lm-mm-adam-random-unroll": (
        "tiny_lm",
        "transformer",
        True,
        {"objective": "mm", "init": "random", "meta_grad": "unroll"},
    ),
    "lm-dc-adam-teacher": ("tiny_lm", "transformer", True, {"objective": "dc"}),
    "lm-mtt-sgd-teacher-paper": (
        "tiny_lm",
        "transformer",
        True,
        {"objective": "mtt", "inner_optimizer": "sgd", "meta_grad": "paper", "mtt_offset": 1},
    ),
    "rec-farzi-adam-teacher-synbatch": ("tiny_rec", "sasrec", True, {"syn_batch": 2, "outer_weight_decay": 1e-4}),
    "lm-farzi-no-trajectories": ("tiny_lm", "transformer", False, {}),
}


@pytest.fixture(scope="module")
def omegas(tiny_lm, tiny_rec, tmp_path_factory) -> dict[str, Path]:
    out = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope runs before conftest's per-test limit: pin it, or the suite order decides
    try:
        for key, ds, model, overrides in (
            ("tiny_lm", tiny_lm, "transformer", TINY_LM),
            ("tiny_rec", tiny_rec, "sasrec", TINY_REC),
        ):
            path = tmp_path_factory.mktemp("omega") / key
            train_trajectories(
                ds,
                model,
                runs=2,
                every=2,
                config=TrainConfig(max_steps=6, batch_size=16, patience=0, seed=5),
                out=path,
                model_overrides=overrides,
            )
            out[key] = path
    finally:
        torch.set_num_threads(before)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_seed_same_bundle_as_before_the_restructure(name, omegas, request, tmp_path) -> None:
    fixture, model, with_traj, changes = CASES[name]
    ds = request.getfixturevalue(fixture)
    cfg = DistillConfig(
        mu=4,
        xi=8,
        latent_dim=4,
        inner_steps=3,
        outer_steps=3,
        real_batch=8,
        model=model,
        model_overrides=TINY_LM if fixture == "tiny_lm" else TINY_REC,
        seed=7,
        **changes,
    )
    result = distill(ds, cfg, tmp_path / "b.safetensors", trajectories=omegas[fixture] if with_traj else None)
    got = {"latent": result.bundle.latent, "decoder": result.bundle.decoder}
    path = ASSETS / f"{name}.safetensors"
    if RECORD:
        ASSETS.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in got.items()}, str(path))
    want = load_file(str(path))
    for key in ("latent", "decoder"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
