"""farzi.audit: n-gram matching and the loss-threshold attack on cases with known answers, a planted copy,
and the refusals of a bundle that does not belong to its dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from farzi.audit import (
    AuditConfig,
    auc,
    audit_bundle,
    check_audit,
    copying_report,
    loss_attack,
    match_ngrams,
    reference_windows,
    sequence_losses,
    tpr_at_fpr,
)
from farzi.batching import SequenceTrainSet
from farzi.data.prepared import PreparedDataset
from farzi.data.sequences import Sequences
from farzi.data.vocab import Vocabulary
from farzi.distill.bundle import load_bundle, save_bundle
from farzi.errors import BundleError, ConfigError
from farzi.models import build_model, make_config
from farzi.train import TrainConfig, train_model

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "formats" / "farzi-audit-v1.schema.json"
TINY_TEACHER = {"model": "sasrec", "config": {"max_len": 16, "d_model": 8, "n_layers": 1, "dropout": 0.0}}
HIGH, LOW = 6.0, -6.0


def hand_bundle(path: Path, ds: PreparedDataset, seqs: list[list[int]], **dataset: object) -> Path:
    """A bundle of ``ds`` whose argmax is ``seqs`` (identity decoder; latent HIGH at the token, LOW elsewhere)."""
    V = ds.vocab_size
    latent = torch.full((len(seqs), len(seqs[0]), V), LOW)  # [mu, xi, V]
    for i, seq in enumerate(seqs):
        for j, t in enumerate(seq):
            latent[i, j, t] = HIGH
    record = {"name": ds.name, "fingerprint": ds.fingerprint(), "path": str(ds.path), **dataset}
    recipe = {"lr": 5e-3, "batch_size": 16, "max_steps": 4, "weight_decay": 0.0}
    return save_bundle(
        path,
        latent,
        torch.eye(V),
        1.0,
        ds.task,
        list(ds.vocab.tokens),
        ds.vocab.sha256(),
        dict(ds.vocab.specials),
        [ds.vocab.pad_id],
        record,
        TINY_TEACHER,
        {},
        recipe=recipe,
    )


def unique_window(ds: PreparedDataset, xi: int) -> tuple[int, list[int]]:
    """A training user and its first ``xi`` items, a window no other training user holds."""
    seqs = [ds.train[i].tolist() for i in range(len(ds.train))]
    for u, s in enumerate(seqs):
        if len(s) < xi:
            continue
        w = s[:xi]
        holders = [v for v, t in enumerate(seqs) if any(t[k : k + xi] == w for k in range(len(t) - xi + 1))]
        if holders == [u]:
            return u, w
    raise AssertionError("no unique window in the fixture")


@pytest.fixture(scope="module")
def planted(tiny_rec: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A 4 x 8 bundle of tiny_rec whose sequence 2 is an exact copy of a training user's first 8 items;
    the others are items no training user has in that order (one item repeated)."""
    user, window = unique_window(tiny_rec, 8)
    first = tiny_rec.vocab.num_specials
    seqs = [[first + k] * 8 for k in (0, 1)] + [window] + [[first + 2] * 8]
    return hand_bundle(tmp_path_factory.mktemp("planted") / "b.safetensors", tiny_rec, seqs), user


# ------------------------------------------------------------------ n-gram matching, by hand


def test_longest_run_and_overlap_by_hand() -> None:
    train = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8])]
    queries = [np.array([2, 3, 4, 9, 6, 7]), np.array([4, 5, 6, 7]), np.array([9, 9]), np.array([6, 7, 8])]
    m = match_ngrams(train, queries)
    # [4, 5, 6, 7]: 5 6 is adjacent in the concatenated split but never inside one training sequence
    assert m.longest.tolist() == [3, 2, 0, 3]
    assert m.where.tolist() == [[0, 0, 1], [0, 0, 3], [-1, -1, -1], [0, 1, 0]]
    assert m.overlap[2].tolist() == [3 / 5, 2 / 3, 0.0, 1.0]  # 2 3, 3 4, 6 7 of 5 bigrams; ...
    assert m.overlap[3][:2].tolist() == [1 / 4, 0.0] and np.isnan(m.overlap[3][2]) and m.overlap[3][3] == 1.0
    assert m.overlap[5][0] == 0.0 and np.isnan(m.overlap[8]).all()  # a query shorter than n has no n-grams


def test_a_whole_copy_runs_to_its_length() -> None:
    rng = np.random.default_rng(0)
    train = [rng.integers(1, 500, size=40) for _ in range(30)]
    query = train[17][5:35]
    m = match_ngrams(train, [query, rng.integers(600, 700, size=30)])
    assert m.longest.tolist() == [30, 0]
    assert m.where[0].tolist() == [0, 17, 5]
    assert all(m.overlap[n][0] == 1.0 for n in (2, 3, 5, 8)) and m.overlap[2][1] == 0.0


def test_reference_windows_are_shaped_like_the_bundle(tiny_rec: PreparedDataset, tiny_lm: PreparedDataset) -> None:
    rec = reference_windows(tiny_rec, 8)
    assert len(rec) == len(tiny_rec.test) and max(len(w) for w in rec) <= 8
    assert rec[0].tolist() == tiny_rec.test[0][-8:].tolist()  # a user's most recent items
    lm = reference_windows(tiny_lm, 8)
    assert all(len(w) == 8 for w in lm[:-1])
    eos = tiny_lm.vocab.specials["<eos>"]
    joined = np.concatenate(lm)
    assert not np.any((joined[1:] == eos) & (joined[:-1] == eos))  # one <eos> between two sentences
    assert len(reference_windows(tiny_lm, 8, most=5)) == 5


# ------------------------------------------------------------------ the attack


def test_auc_and_tpr_by_hand() -> None:
    assert auc([3, 4], [1, 2]) == 1.0 and auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 2], [1, 2]) == 0.5  # ties count half
    assert auc([2, 3], [1, 2]) == 0.875  # 3 wins and one tie of 4 pairs
    # 200 non-members: at most 2 (1 %) may pass the threshold, so it is the third highest, 197
    assert tpr_at_fpr(np.array([197.0, 197.5, 300.0, 0.0]), np.arange(200.0)) == 0.5


def test_identical_distributions_give_an_interval_around_chance() -> None:
    rng = np.random.default_rng(3)
    same = loss_attack([rng.normal(2.0, 0.5, 300)], [rng.normal(2.0, 0.5, 200)], n_boot=500, seed=1)
    assert same["auc"]["lo"] < 0.5 < same["auc"]["hi"]
    assert same["tpr_at_fpr"]["lo"] <= 0.01 <= same["tpr_at_fpr"]["hi"] + 0.02
    exact = loss_attack([np.full(50, 1.0)], [np.full(40, 1.0)], n_boot=200)
    assert exact["auc"] == {"value": 0.5, "lo": 0.5, "hi": 0.5}
    # seeded: the same draws give the same interval
    assert loss_attack([np.arange(30.0)], [np.arange(20.0)], n_boot=200, seed=5) == loss_attack(
        [np.arange(30.0)], [np.arange(20.0)], n_boot=200, seed=5
    )


def test_a_model_that_memorized_its_members_is_found_out() -> None:
    """A SASRec trained to near-zero loss on 16 random histories: the attack separates them from 32 others."""
    rng = np.random.default_rng(0)
    vocab = Vocabulary(["<pad>"] + [f"i{k}" for k in range(40)], {"<pad>": 0})
    draw = [rng.integers(1, 41, size=12).tolist() for _ in range(16 + 32 + 8)]
    splits = {
        "train": Sequences.from_lists([f"u{k}" for k in range(16)], draw[:16]),
        "valid": Sequences.from_lists([f"v{k}" for k in range(8)], draw[48:]),
        "test": Sequences.from_lists([f"t{k}" for k in range(32)], draw[16:48]),
    }
    ds = PreparedDataset("memorize", "rec", vocab, splits)
    torch.manual_seed(0)
    model = build_model("sasrec", make_config("sasrec", 41, max_len=12, d_model=32, n_layers=1, dropout=0.0))
    cfg = TrainConfig(lr=2e-2, batch_size=16, max_steps=120, eval_every=120, patience=0)
    model = train_model(model, SequenceTrainSet(ds.train, 12, crop="last"), ds, cfg).model
    members = sequence_losses(model, [ds.train[i] for i in range(16)])
    others = sequence_losses(model, [ds.test[i] for i in range(32)])
    assert members.mean() < 0.1 < 2.0 < others.mean()  # memorized; random for the rest
    res = loss_attack([members], [others], n_boot=300)
    assert res["auc"]["value"] > 0.98 and res["auc"]["lo"] > 0.9
    assert res["tpr_at_fpr"]["value"] > 0.9


# ------------------------------------------------------------------ copying


def test_a_planted_copy_is_found_with_its_user(planted: tuple[Path, int], tiny_rec: PreparedDataset) -> None:
    bundle, user = planted
    rep = copying_report(load_bundle(bundle), tiny_rec, samples=2, min_copy=8, seed=0)
    argmax = [c for c in rep["copies"] if c["decode"] == "argmax"]
    assert [(c["sequence"], c["length"], c["start"], c["train_start"]) for c in argmax] == [(2, 8, 0, 0)]
    assert argmax[0]["train_id"] == str(tiny_rec.train.ids[user]) and argmax[0]["train_index"] == user
    assert rep["synthetic"]["argmax"]["longest_run"]["max"] == 8
    assert rep["synthetic"]["sampled"]["sequences"] == 8  # 4 sequences x 2 draws
    # the draws are near one-hot: they copy the same user
    assert {c["train_index"] for c in rep["copies"]} == {user}
    per = {p["name"]: p for p in rep["per_sequence"]}
    assert per["syn2-0"]["longest_run"] == 8 and per["syn2-0"]["ngram_overlap"]["8"] == 1.0
    assert rep["held_out"]["sequences"] == len(tiny_rec.test) and rep["held_out"]["longest_run"]["max"] >= 1


def test_audit_writes_json_and_plot_that_validate(planted: tuple[Path, int], tiny_rec, tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    bundle, _ = planted
    cfg = AuditConfig(samples=1, min_copy=8, students=1, max_steps=3, n_boot=100)
    doc = audit_bundle(bundle, tiny_rec, cfg, tmp_path / "a")
    on_disk = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert (tmp_path / "a" / "audit.png").read_bytes()[:4] == b"\x89PNG"
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(on_disk)
    groups = doc["membership"]["groups"]
    assert [g["label"] for g in groups] == ["farzi 4x8", "random:4", "full"]
    assert all(0.0 <= g["auc"]["lo"] <= g["auc"]["value"] <= g["auc"]["hi"] <= 1.0 for g in groups)
    own = groups[1]["own_members"]  # random:4: the attack on the 4 users its student trained on
    assert own["members"] == 4 and 0.0 <= own["auc"]["lo"] <= own["auc"]["hi"] <= 1.0
    assert "own_members" not in groups[0] and "own_members" not in groups[2]
    assert doc["membership"]["members"]["sequences"] == len(tiny_rec.train)
    assert doc["membership"]["non_members"]["sequences"] == len(tiny_rec.valid) + len(tiny_rec.test)
    assert doc["config"]["seed"] == 0 and doc["package"]["name"] == "farzi"


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"samples": -1}, "--samples -1 is out of range"),
        ({"min_copy": 0}, "--min-copy 0 must be at least 1"),
        ({"students": -2}, "--students -2 is out of range"),
        ({"models": [Path("/nonexistent/model")]}, "does not exist"),
    ],
)
def test_bad_options_are_refused(planted, tiny_rec, change: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        check_audit(planted[0], tiny_rec, AuditConfig(**change))


def test_a_bundle_of_another_dataset_is_refused(planted, tiny_rec, tiny_lm, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="is for rec, dataset"):
        check_audit(planted[0], tiny_lm, AuditConfig())
    other = hand_bundle(tmp_path / "o.safetensors", tiny_rec, [[1] * 4], fingerprint="0" * 64, name="elsewhere")
    with pytest.raises(BundleError, match="was distilled from dataset 'elsewhere'"):
        check_audit(other, tiny_rec, AuditConfig())
