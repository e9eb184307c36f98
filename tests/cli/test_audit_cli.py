"""`farzictl audit` through the real entry point: the table, --json (valid against its schema), --plan, and
the refusals (one line, exit 2, no traceback) of mismatched bundles and bad option values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import farzictl
from test_audit import SCHEMA, hand_bundle, unique_window

from farzi.checkpoint import dataset_record, save_checkpoint
from farzi.data.prepare import PrepareOptions, prepare
from farzi.models import build_model, make_config


@pytest.fixture(scope="module")
def setup(tiny_rec, tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A planted tiny_rec bundle, a tiny_lm bundle, a model of tiny_rec and one of tiny_lm."""
    where = tmp_path_factory.mktemp("audit-cli")
    _, window = unique_window(tiny_rec, 8)
    first = tiny_rec.vocab.num_specials
    rec = hand_bundle(where / "rec.safetensors", tiny_rec, [window, [first] * 8, [first + 1] * 8])
    lm = hand_bundle(where / "lm.safetensors", tiny_lm, [[3, 4, 5, 6]])
    out = {"rec": rec, "lm": lm, "where": where}
    for name, ds, model in (("model_rec", tiny_rec, "sasrec"), ("model_lm", tiny_lm, "transformer")):
        torch.manual_seed(0)
        m = build_model(model, make_config(model, ds.vocab_size, max_len=16, d_model=8, n_layers=1))
        out[name] = save_checkpoint(where / f"{name}.safetensors", m, dataset_record(ds))
    return out


def test_audit_json_validates_and_names_the_copy(setup, tiny_rec, tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "audit"
    args = ["audit", setup["rec"], "--data", tiny_rec.path, "--samples", "0", "--min-copy", "8", "--out", out]
    res = farzictl(*args, "--students", "1", "--max-steps", "2", "--models", setup["model_rec"], "--json").ok()
    doc = json.loads(res.stdout)
    assert doc["out"] == str(out) and doc["plan"]["command"] == "audit"
    written = json.loads((out / "audit.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(written)
    assert (out / "audit.png").is_file()
    assert [(c["name"], c["length"]) for c in written["copying"]["copies"]] == [("syn0-0", 8)]
    assert written["copying"]["synthetic"]["sampled"] is None
    # --models stand for the bundle's students; random:N and full are trained beside them
    labels = [g["label"] for g in written["membership"]["groups"]]
    assert labels == ["farzi (given models)", "random:3", "full"]
    assert written["membership"]["groups"][0]["students"][0]["source"] == str(setup["model_rec"])


def test_audit_table_and_default_dataset(setup, tmp_path: Path) -> None:
    # no --data: the dataset the bundle records; no students: copying alone
    res = farzictl("audit", setup["rec"], "--students", "0", "--samples", "1", "--out", tmp_path / "a").ok()
    assert "Copying" in res.stdout and "held-out" in res.stdout and "sampled" in res.stdout
    assert "no synthetic sequence copies a training window of 10+ tokens" in res.stdout  # the default --min-copy
    assert "Membership inference" not in res.stdout
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["membership"] is None


def test_audit_plan_writes_nothing(setup, tmp_path: Path) -> None:
    res = farzictl("audit", setup["rec"], "--max-steps", "5", "--plan", "--out", tmp_path / "p").ok()
    assert res.stdout.startswith("plan: audit will take about")
    assert "farzi 3x8: training: 5 x" in res.stdout and "full: training" in res.stdout
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--samples", "-1"], "--samples -1 is out of range"),
        (["--min-copy", "0"], "--min-copy 0 must be at least 1"),
        (["--students", "-1"], "--students -1 is out of range"),
        (["--max-steps", "-3"], "--max-steps -3 must be >= 0"),
        (["--models", "{where}/nope"], "does not exist"),
        (["--models", "{where}"], "without model.safetensors"),
        (["--models", "{model_lm}"], "vocabulary of"),
        (["--models", "{lm}"], "is not a farzi model checkpoint"),
        (["--data", "{lm_data}"], "is for rec, dataset 'synthetic-lm' is lm"),
        (["--data", "{other}"], "distilled over another vocabulary"),
        (["--out", "{rec}"], "is not a directory"),
        (["--out", "{where}"], "holds files an audit did not write (lm.safetensors, model_lm.safetensors"),
    ],
)
def test_refusals_are_one_line(setup, tiny_lm, tmp_path: Path, args: list[str], expected: str) -> None:
    paths = {k: str(v) for k, v in setup.items()} | {"lm_data": str(tiny_lm.path)}
    if any("{other}" in a for a in args):  # the same task, another vocabulary
        opts = PrepareOptions(synthetic_vocab=25, synthetic_sequences=40, seed=1)
        paths["other"] = str(prepare("synthetic-rec", opts, home=tmp_path).path)
    argv = [a.format(**paths) for a in args]
    line = farzictl("audit", setup["rec"], "--students", "0", "--out", tmp_path / "x", *argv).one_error_line()
    assert expected in line, line
    assert not (tmp_path / "x").exists()


def test_a_bundle_of_another_dataset_same_vocabulary(setup, tiny_rec, tmp_path: Path) -> None:
    moved = hand_bundle(tmp_path / "m.safetensors", tiny_rec, [[1] * 4], fingerprint="f" * 64, name="elsewhere")
    line = farzictl("audit", moved, "--data", tiny_rec.path, "--students", "0").one_error_line()
    assert "was distilled from dataset 'elsewhere'" in line and "--data" in line
