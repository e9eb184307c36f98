"""farzi.train.train_model: determinism, early stopping, target metric, soft inputs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import farzi.train
from farzi.batching import NO_BUCKETING, DistributionTrainSet, SequenceTrainSet, pad_right
from farzi.data.prepared import PreparedDataset
from farzi.data.sequences import Sequences
from farzi.errors import ConfigError
from farzi.models import SequenceModel, build_model, make_config, next_token_loss
from farzi.train import TrainConfig, TrainResult, train_model

TINY = {
    "sasrec": {"d_model": 8, "n_layers": 1, "n_heads": 1, "max_len": 20},
    "transformer": {"d_model": 8, "n_layers": 1, "n_heads": 1, "d_ff": 16, "max_len": 16},
}


def tiny_model(ds: PreparedDataset, name: str, seed: int = 0, **overrides: Any) -> SequenceModel:
    torch.manual_seed(seed)
    return build_model(name, make_config(name, ds.vocab_size, **{**TINY[name], **overrides}))


def run(ds: PreparedDataset, name: str, seed: int = 0, **train: Any) -> TrainResult:
    model = tiny_model(ds, name, seed)
    cfg = TrainConfig(**{"max_steps": 20, "batch_size": 16, "eval_every": 10, "patience": 0, "seed": seed, **train})
    return train_model(model, SequenceTrainSet(ds.train, model.config.max_len), ds, cfg)


def _without_time(curve: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k != "elapsed"} for p in curve]


def _same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize(("dataset", "name"), [("tiny_lm", "transformer"), ("tiny_rec", "sasrec")])
def test_same_seed_same_model(request: pytest.FixtureRequest, dataset: str, name: str) -> None:
    ds = request.getfixturevalue(dataset)
    first, second = run(ds, name, seed=3), run(ds, name, seed=3)  # dropout on: the seed drives it too
    assert _same_state(first.model.state_dict(), second.model.state_dict())
    assert _without_time(first.curve) == _without_time(second.curve)
    assert [p["step"] for p in first.curve] == [10, 20]
    assert first.steps == 20 and first.sequences_seen == second.sequences_seen
    other = run(ds, name, seed=4)
    assert not _same_state(first.model.state_dict(), other.model.state_dict())


def test_bad_config_is_refused(tiny_rec: PreparedDataset) -> None:
    with pytest.raises(ConfigError, match="learning rate"):
        run(tiny_rec, "sasrec", lr=0.0)
    with pytest.raises(ConfigError, match="max steps"):
        run(tiny_rec, "sasrec", max_steps=0)


def test_empty_training_set_is_refused(tiny_rec: PreparedDataset) -> None:
    model = tiny_model(tiny_rec, "sasrec")
    empty = SequenceTrainSet(Sequences.from_lists([], []), 20)
    with pytest.raises(ConfigError, match="no training sequences"):
        train_model(model, empty, tiny_rec, TrainConfig(max_steps=3))


# ------------------------------------------------------------------ early stopping, scripted validation


class Scripted:
    """Stands in for farzi.train.evaluate: returns the given metric values in turn."""

    def __init__(self, metric: str, values: list[float]) -> None:
        self.metric, self.values, self.calls = metric, iter(values), 0

    def __call__(self, model: SequenceModel, ds: PreparedDataset, split: str, **kw: Any) -> dict[str, float]:
        assert split == "valid"
        self.calls += 1
        return {self.metric: next(self.values)}


def scripted_run(
    monkeypatch: pytest.MonkeyPatch,
    ds: PreparedDataset,
    name: str,
    values: list[float],
    **train: Any,
) -> tuple[TrainResult, dict[int, dict[str, Tensor]]]:
    metric = "hr@10" if ds.task == "rec" else "ppl_corpus"
    monkeypatch.setattr(farzi.train, "evaluate", Scripted(metric, values))
    states: dict[int, dict[str, Tensor]] = {}

    def keep(step: int, model: SequenceModel, validation: dict[str, Any] | None, _opt: object) -> None:
        if validation is not None:
            states[step] = copy.deepcopy(model.state_dict())

    target = train.pop("target", None)
    model = tiny_model(ds, name)
    cfg = TrainConfig(**{"max_steps": 12, "batch_size": 16, "eval_every": 1, "seed": 0, "metric": metric, **train})
    train_set = SequenceTrainSet(ds.train, model.config.max_len)
    return train_model(model, train_set, ds, cfg, on_step=keep, target_metric=target), states


def test_patience_stops_and_restores_the_best_state(monkeypatch: pytest.MonkeyPatch, tiny_rec) -> None:
    # hr@10 (higher is better): best 30 at step 2, then three validations without improvement
    result, states = scripted_run(monkeypatch, tiny_rec, "sasrec", [10, 30, 20, 25, 29, 40, 50], patience=3)
    assert result.stopped_early
    assert result.steps == 5 and len(result.curve) == 5
    assert (result.best_step, result.best_metric, result.metric) == (2, 30, "hr@10")
    assert _same_state(result.model.state_dict(), states[2])
    assert not _same_state(states[2], states[5])
    assert not result.model.training


def test_patience_on_a_lower_is_better_metric(monkeypatch: pytest.MonkeyPatch, tiny_lm) -> None:
    result, states = scripted_run(monkeypatch, tiny_lm, "transformer", [50, 40, 45, 41, 39, 30], patience=2)
    assert result.stopped_early and result.steps == 4
    assert (result.best_step, result.best_metric, result.metric) == (2, 40, "ppl_corpus")
    assert _same_state(result.model.state_dict(), states[2])


def test_patience_zero_never_stops(monkeypatch: pytest.MonkeyPatch, tiny_rec) -> None:
    values = [50.0 - i for i in range(12)]  # only ever worse
    result, states = scripted_run(monkeypatch, tiny_rec, "sasrec", values, patience=0, max_steps=6)
    assert not result.stopped_early and result.steps == 6
    assert result.best_step == 1 and _same_state(result.model.state_dict(), states[1])


def test_target_metric_stops_as_soon_as_reached(monkeypatch: pytest.MonkeyPatch, tiny_rec, tiny_lm) -> None:
    result, states = scripted_run(monkeypatch, tiny_rec, "sasrec", [10, 20, 35, 50, 60], patience=0, target=30.0)
    assert result.steps == 3 and not result.stopped_early
    assert (result.best_step, result.best_metric) == (3, 35)
    assert _same_state(result.model.state_dict(), states[3])
    result, _ = scripted_run(monkeypatch, tiny_lm, "transformer", [50, 45, 41, 30], patience=0, target=42.0)
    assert result.steps == 3 and result.best_metric == 41


def test_validation_at_the_last_step(monkeypatch: pytest.MonkeyPatch, tiny_rec) -> None:
    result, _ = scripted_run(monkeypatch, tiny_rec, "sasrec", [1.0, 2.0, 3.0], eval_every=4, max_steps=9)
    assert [p["step"] for p in result.curve] == [4, 8, 9]


# ------------------------------------------------------------------ soft inputs


class OneHotSummary:
    """Looks like Farzi Data to DistributionTrainSet: materialize() gives one-hot rows."""

    def __init__(self, seqs: Sequences, vocab_size: int) -> None:
        self.seqs, self.vocab_size = seqs, vocab_size
        self.latent = torch.zeros(len(seqs), 1)

    def materialize(self, idx: Tensor) -> Tensor:
        ids = pad_right([self.seqs[int(i)] for i in idx])
        out = F.one_hot(ids, self.vocab_size).double()
        out[ids == 0] = 0.0  # padding carries no mass
        return out


def _trace(model: SequenceModel, train_set: Any, ds: PreparedDataset) -> tuple[list[dict], TrainResult]:
    states: list[dict[str, Tensor]] = []
    cfg = TrainConfig(max_steps=8, batch_size=8, eval_every=4, patience=0, seed=5)

    def keep(step: int, m: SequenceModel, validation: dict[str, Any] | None, _opt: object) -> None:
        states.append({k: v.detach().clone() for k, v in m.state_dict().items()})

    return states, train_model(model, train_set, ds, cfg, on_step=keep)


def test_one_hot_distributions_train_like_ids(tiny_lm: PreparedDataset) -> None:
    seqs = tiny_lm.train.subset(range(24))  # three batches of 8: the order differs per epoch
    base = tiny_model(tiny_lm, "transformer", dropout=0.0, max_len=64).double()  # no sentence is cropped
    ids = SequenceTrainSet(seqs, 64, crop="last", bucketing=NO_BUCKETING)  # batches in the order soft ones come
    ids_states, ids_result = _trace(copy.deepcopy(base), ids, tiny_lm)
    soft = DistributionTrainSet(OneHotSummary(seqs, tiny_lm.vocab_size))
    assert soft.kind == "soft"
    soft_states, soft_result = _trace(copy.deepcopy(base), soft, tiny_lm)
    assert len(ids_states) == len(soft_states) == 8
    for step, (a, b) in enumerate(zip(ids_states, soft_states, strict=True), start=1):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12, msg=f"step {step}: {key}")
    assert not _same_state(ids_states[0], ids_states[-1])  # it did train
    for p, q in zip(ids_result.curve, soft_result.curve, strict=True):
        assert p["train_loss"] == pytest.approx(q["train_loss"], rel=1e-10)
        assert p["ppl_corpus"] == pytest.approx(q["ppl_corpus"], rel=1e-6)


def test_discrete_draws_from_one_hot_rows_are_the_ids(tiny_lm: PreparedDataset) -> None:
    # Farzi Data has no padding: every row a distribution, every sequence the same length
    seqs = Sequences.from_lists([str(i) for i in range(10)], [tiny_lm.train[i][:3] for i in range(10)])
    sampled = DistributionTrainSet(OneHotSummary(seqs, tiny_lm.vocab_size), discrete=True)
    assert sampled.kind == "ids"
    rows: Iterator[Tensor] = sampled.batches(4, torch.Generator().manual_seed(0), torch.device("cpu"))
    seen = [tuple(int(t) for t in row if t != 0) for batch in rows for row in batch]
    assert sorted(seen) == sorted(tuple(int(t) for t in s) for s in seqs)


# ------------------------------------------------------------------ the loop's parts


def test_early_stopping_by_hand() -> None:
    model = torch.nn.Linear(1, 1)
    stop = farzi.train.EarlyStopping(higher=True, patience=2, target=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert stop.best == -float("inf")
    assert not stop.update(1, 0.5, model) and (stop.best, stop.best_step, stop.bad) == (0.5, 1, 0)
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert not stop.update(2, 0.4, model) and (stop.best, stop.best_step, stop.bad) == (0.5, 1, 1)
    assert float(stop.best_state["weight"]) == 1.0  # the state at the best step, not the current one
    assert stop.update(3, 0.45, model) and stop.stopped_early  # two validations without improvement
    lower = farzi.train.EarlyStopping(higher=False, patience=0, target=10.0)
    assert lower.best == float("inf")
    assert not lower.update(1, 12.0, model) and not lower.update(2, 13.0, model)
    assert lower.update(3, 10.0, model) and not lower.stopped_early  # the target, not patience
    assert (lower.best, lower.best_step) == (10.0, 3)
    first_nan = farzi.train.EarlyStopping(higher=True, patience=0)
    first_nan.update(1, float("nan"), model)
    assert first_nan.best_step == 1  # the first validation is the best so far, whatever its value


def test_batch_stream_runs_epoch_after_epoch(tiny_rec: PreparedDataset) -> None:
    train = SequenceTrainSet(tiny_rec.train, 20)
    per_epoch = -(-len(tiny_rec.train) // 32)
    stream = farzi.train.batch_stream(train, 32, torch.Generator().manual_seed(0), torch.device("cpu"))
    got = [next(stream) for _ in range(2 * per_epoch + 1)]
    gen = torch.Generator().manual_seed(0)
    want = [b for _ in range(3) for b in train.batches(32, gen, torch.device("cpu"))][: len(got)]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert sum(len(b) for b in got[:per_epoch]) == len(tiny_rec.train)


def test_train_step_is_one_adam_step_on_the_plain_loss(tiny_rec: PreparedDataset) -> None:
    fast = tiny_model(tiny_rec, "sasrec", dropout=0.0).double()
    plain = copy.deepcopy(fast)
    batch = next(SequenceTrainSet(tiny_rec.train, 20).batches(16, torch.Generator().manual_seed(1), "cpu"))
    opt_fast = torch.optim.Adam(fast.parameters(), lr=1e-2)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-2)
    loss = farzi.train.train_step(fast, opt_fast, batch)
    reference = next_token_loss(plain(batch), batch)
    reference.backward()
    opt_plain.step()
    assert loss == pytest.approx(float(reference.detach()), rel=1e-12)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_negative_patience_and_eval_every_are_refused_with_the_fix() -> None:
    import pytest

    from farzi.errors import ConfigError
    from farzi.train import TrainConfig

    with pytest.raises(ConfigError, match="patience -1 must be >= 0"):
        TrainConfig(patience=-1).validate()
    with pytest.raises(ConfigError, match="eval every -5 must be >= 0"):
        TrainConfig(eval_every=-5).validate()
