"""The teacher: the model whose training the summary must drive, and Omega, its checkpoints.

Distillation needs one architecture (run functionally in the inner loop, in eval
mode) and, for every objective but ``mm``, the checkpoints of its training runs on
the real data (``farzictl trajectories``): the inner loops start from them, and the
``teacher`` / ``real`` initializations ask the most trained one about the data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from farzi.data.prepared import PreparedDataset
from farzi.distill.config import DistillConfig, Objective
from farzi.errors import ConfigError
from farzi.models import DEFAULT_MODEL, SequenceModel, build_model, make_config, model_task
from farzi.moments import AdamMoments
from farzi.trajectories import Omega, load_trajectories


@dataclass
class Teacher:
    model: SequenceModel  # eval mode, on the run's device; its own weights are never trained
    omega: Omega | None
    device: torch.device

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]

    def checkpoint(self, i: int) -> list[Tensor]:
        """Omega's checkpoint ``i`` as a list of tensors, in the order of :attr:`names`."""
        assert self.omega is not None
        params = self.omega.params(i)
        return [params[n].to(self.device) for n in self.names]

    def moments(self, i: int) -> AdamMoments | None:
        """The trajectory run's Adam state at checkpoint ``i``, on the run's device (None if not saved)."""
        assert self.omega is not None
        m = self.omega.moments(i)
        if m is None:
            return None
        to = {k: v.to(self.device) for k, v in m.exp_avg.items()}
        sq = {k: v.to(self.device) for k, v in m.exp_avg_sq.items()}
        return AdamMoments(to, sq, m.step, m.hyper)

    def sample_checkpoint(self, rng: random.Random) -> int:
        assert self.omega is not None
        return self.omega.sample(rng)

    def random_init(self, rng: random.Random) -> list[Tensor]:
        """Fresh weights from the architecture's initializer, seeded by ``rng``."""
        torch.manual_seed(rng.randrange(1 << 62))
        fresh = build_model(self.model.name, self.model.config)
        return [p.detach().to(self.device) for p in fresh.parameters()]

    def full_data(self, i: int | None) -> list[Tensor]:
        """The weights of a full-data model (``--feature-align``), in the order of :attr:`names`: the last
        checkpoint (latest step) of the run checkpoint ``i`` belongs to; for ``i`` None (a random start)
        the most trained checkpoint of Omega; without Omega the teacher's own weights."""
        if self.omega is None:
            return [p.detach() for p in self.model.parameters()]
        omega = self.omega
        if i is None:
            j = max(range(len(omega)), key=lambda k: (omega.entry(k)["step"], -omega.entry(k)["run"]))
        else:
            run = omega.entry(i)["run"]
            same = [k for k in range(len(omega)) if omega.entry(k)["run"] == run]
            j = max(same, key=lambda k: omega.entry(k)["step"])
        return self.checkpoint(j)

    def trained_model(self) -> SequenceModel:
        """The most trained checkpoint of Omega as a model (on the CPU, eval mode); the
        teacher's own weights when there is no Omega."""
        model = build_model(self.model.name, self.model.config).eval()
        if self.omega is None:
            model.load_state_dict(self.model.state_dict())
            return model
        omega = self.omega
        last = max(range(len(omega)), key=lambda i: (omega.entry(i)["step"], -omega.entry(i)["run"]))
        params = omega.params(last)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n])
        return model


def load_teacher(ds: PreparedDataset, cfg: DistillConfig, trajectories: Path | None) -> Teacher:
    """The teacher for ``cfg`` on ``ds``: Omega's model when ``trajectories`` is given, else a
    fresh model of ``cfg.model`` (or the task's default). Builds it with the global torch RNG."""
    omega = None
    if trajectories is not None:
        omega = load_trajectories(Path(trajectories), ds, model_name=cfg.model or None)
        if cfg.omega_runs:
            omega = omega.first_runs(cfg.omega_runs)
        model = build_model(omega.model_name, omega.config)
    else:
        if cfg.objective in (Objective.dc, Objective.mtt):
            raise ConfigError(
                f"objective {cfg.objective.value!r} needs --trajectories", "train them with farzictl trajectories"
            )
        name = cfg.model or DEFAULT_MODEL[ds.task]
        if model_task(name) != ds.task:
            raise ConfigError(
                f"model {name!r} is for {model_task(name)}, dataset {ds.name!r} is {ds.task}",
                "pick a model for this task",
            )
        model = build_model(name, make_config(name, ds.vocab_size, **cfg.model_overrides))
    if model.config.max_len < cfg.xi:
        raise ConfigError(
            f"the teacher's context ({model.config.max_len}) is shorter than the budget length {cfg.xi}",
            "pick a shorter budget or a teacher with a longer --max-len",
        )
    device = torch.device(cfg.device)
    return Teacher(model=model.eval().to(device), omega=omega, device=device)
