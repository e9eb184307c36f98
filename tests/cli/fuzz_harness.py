"""A fuzz harness for the ``farzictl`` command line (issue 26): seeded random command lines, each run
on tiny data under a memory limit and a timeout, each checked the way a script and a user see it.

What a draw is
    One command (the writing ones: prepare, trajectories, distill, train-student, export; eval and
    inspect in a smaller share of read-only draws) with its positional argument and a random subset
    of its options. The options are read from the click command Typer builds
    (``typer.main.get_command(farzictl.app.app)``): name, flags, declared type (int, float, choice,
    bool, path, string) and declared bounds, so an option added tomorrow is fuzzed tomorrow. Each
    value is drawn from one of three pools: *typical* (small, valid), *extreme* (0, -1, the bounds
    and one past them, 2**31, 2**63, 10**40, 1e308, inf, nan, ...) or *odd* (garbage strings, and for
    paths: nonexistent, a file where a directory is expected, a path inside a file, a name over 255
    bytes, a path over PATH_MAX, a read-only directory, the workspace itself, the current directory,
    the input dataset's directory, symlinks, and odd files: empty, garbage bytes, a truncated or
    lying safetensors). A small table of option names adds meaning where the type alone says
    little (``--budget``, ``--data``, ``--model``, dataset names, ...).

Why valid long runs are kept small
    A valid command that runs for an hour is not a defect, and a harness that waits for it cannot
    run 1,000 draws. So the options that set the *amount* of work (``--max-steps``,
    ``--outer-steps``, ``--inner-steps``, ``--runs``, ``--samples``, ``--budget``, the model sizes,
    ...) are given small values in every draw (:data:`BASE`), and when drawn they take small valid
    values or *invalid* extremes (0, -1, past a bound, beyond int64) that must be refused at once.
    A huge but representable step count (``--outer-steps 2147483648``) is only drawn together with
    ``--plan``, which must answer in seconds whatever the count; without ``--plan`` it is a valid
    long run and is not drawn. Huge sizes (``--latent-dim``, ``--d-model``, ``--real-batch``, ...)
    are drawn as they are: they must be refused in one line, not run out of memory with a
    traceback. Sources that download are only drawn with a local ``--source`` or an unreachable
    local ``--mirror``: nothing leaves the machine.

What a draw must do
    Exit 0 or 2; no ``Traceback`` on stdout or stderr; on exit 2 exactly one stderr line that starts
    with ``error: ``; finish within the timeout; touch nothing outside its declared outputs; leave no
    temporary (``.NAME.tmp-*``, ``.NAME.old-*``, ``.NAME.part-*``), no lock (``.NAME.lock``), nothing
    in ``$TMPDIR`` (``farzi-ranks-*``, ``torchinductor_*``, ...) and no process behind.

    The declared outputs of a draw are its ``--out`` or the command's default location in the
    workspace (:func:`declared_outputs`), each with its companions (distill's ``.log.jsonl`` and
    ``.state.safetensors``, export's ``PATH.json`` sidecar) and their hidden siblings ``.NAME.*``,
    plus new parent directories of those. An output that is (or holds) the scratch root, the
    workspace, the current directory or one of the draw's inputs grants nothing (``--overwrite``
    must never delete those), nor does an output that would replace an existing file inside an
    input. ``--plan`` writes nothing at all.

How it runs
    A session builds one template tree: ``home/`` (a workspace with tiny rec and lm datasets,
    trajectories, bundles and models, built by the CLI itself), ``inputs/`` (the odd paths and
    files), ``out/``, ``userhome/`` (``$HOME``) and ``tmp/`` (``$TMPDIR``). Every draw runs in its own
    fresh copy of it, with that copy as the current directory and every drawn path relative to it,
    so a draw is independent of all others: ``--only N`` replays draw N alone, bit for bit.

    A fork server (the default, ``--mode fork``) imports ``farzictl.app`` (torch, polars) once and
    forks a child per draw; the parent never runs a torch or polars operation (their thread pools
    must not exist at fork time), and pre-imports the modules the fixture runs imported lazily.
    The child starts a new session, redirects stdin/stdout/stderr, enters the draw's directory
    and environment, sets ``RLIMIT_AS`` (the memory limit; torch and polars run under it), a file
    size limit (``SIGXFSZ`` ignored: a write past it fails with ``EFBIG``) and a CPU limit, one
    torch thread, then calls :func:`farzictl.app.entry` as ``python -m farzictl`` would, printing an
    uncaught exception the way the interpreter does. Process spawns are capped at
    :data:`MAX_SPAWNS` per draw (more fail with ``EAGAIN``, as under a process limit, which root
    does not get): an unbounded ``--nproc`` cannot fork-bomb the machine. ``--mode subprocess``
    runs ``python -c`` with the same limits and the same cap instead (3-5 s more per draw).
    Timed-out or signalled draws of the fork mode are run again in subprocess mode to tell a fork
    artifact from a real hang.

Run it
    ``python tests/cli/fuzz_harness.py --seed 0 --draws 1000 --jobs 2 --report r.json`` (or the slow
    test, ``FARZI_FUZZ_SEED=0 FARZI_FUZZ_DRAWS=1000 FARZI_FUZZ_ONLY=17 pytest -m slow
    tests/cli/test_cli_fuzz.py``). As root a read-only directory is writable, so that case only
    checks that nothing outside the outputs changes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import fnmatch
import glob
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import traceback
import typing
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

WRITING = ("prepare", "trajectories", "distill", "train-student", "export")
READ_ONLY = ("eval", "inspect")
WEIGHTS = {"prepare": 1.0, "trajectories": 1.0, "distill": 1.3, "train-student": 1.0, "export": 1.0}
READ_ONLY_BASE = 1_000_000  # read-only draws are numbered from here: writing draws keep their numbers

MAX_SPAWNS = 4  # child processes one draw may start (--nproc 2 needs 2)
DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_MB = 4096
FILE_SIZE_LIMIT = 512 << 20
EXIT_HARNESS = 99  # the child could not be set up: the harness's fault, not farzictl's

# The environment of every draw (besides HOME, FARZI_HOME, TMPDIR), set in the fork server too:
# OpenMP reads its thread count when torch loads, rich its terminal settings when ui.py loads.
QUIET_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NO_COLOR": "1",
    "TERM": "dumb",
    "COLUMNS": "120",
    "PYTHONDONTWRITEBYTECODE": "1",
    "_RJEM_MALLOC_CONF": "background_thread:false",  # polars' jemalloc: no background threads to lose at fork
}

# ------------------------------------------------------------------ the tiny data

TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "12", "--batch-size", "8"]
DISTILL_TINY = ["--budget", "4x8", "--outer-steps", "2", "--inner-steps", "2", "--real-batch", "8"]
FIXTURES: list[list[list[str]]] = [  # waves: the runs of a wave are independent
    [
        ["prepare", "synthetic-rec", "--name", "tiny-rec", "--synthetic-vocab", "20", "--synthetic-sequences", "30"],
        ["prepare", "synthetic-lm", "--name", "tiny-lm", "--synthetic-vocab", "20", "--synthetic-sequences", "30"],
    ],
    [
        ["trajectories", "tiny-rec", "--runs", "1", "--max-steps", "6", "--every", "2", *TINY],
        ["trajectories", "tiny-lm", "--runs", "1", "--max-steps", "6", "--every", "2", *TINY],
    ],
    [
        ["distill", "tiny-rec", *DISTILL_TINY, "--recipe-steps", "4"],
        ["distill", "tiny-lm", *DISTILL_TINY, "--recipe-steps", "4"],
    ],
    [
        ["train-student", "tiny-rec", "--max-steps", "4", *TINY],
        ["train-student", "tiny-lm", "--max-steps", "4", *TINY],
    ],
]
REC_BUNDLE = "home/bundles/tiny-rec/farzi-4x8-s0.safetensors"
LM_BUNDLE = "home/bundles/tiny-lm/farzi-4x8-s0.safetensors"
REC_MODEL = "home/models/tiny-rec/sasrec-full-s0"
LM_MODEL = "home/models/tiny-lm/transformer-full-s0"

LONG_NAME = "n" * 300  # over NAME_MAX (255)
LONG_PATH = "inputs/" + "/".join(["d" * 200] * 25)  # over PATH_MAX (4096), every part short enough
DEEP_PATH = "inputs/deep/" + "/".join("abcdefghij") + "/out"


def write_inputs(root: Path) -> None:
    """The user's files a draw may point at (``inputs/``), and the empty places (``out/``, ``userhome/``, ``tmp/``)."""
    rng = random.Random(26)
    inp = root / "inputs"
    for d in ("inputs/userdir/sub", "inputs/emptydir", "inputs/ro", "inputs/ptb", "inputs/fakeds", "out"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("userhome", "tmp", "home"):
        (root / d).mkdir(exist_ok=True)
    words = [f"w{i}" for i in range(30)]
    corpus = "".join(" ".join(rng.choices(words, k=rng.randint(3, 9))) + "\n" for _ in range(80))
    (inp / "corpus.txt").write_text(corpus)
    for split in ("train", "valid", "test"):
        (inp / "ptb" / f"ptb.{split}.txt").write_text(corpus)
    rows = [(u, rng.randrange(25), t) for u in range(30) for t in range(rng.randint(2, 7))]
    (inp / "log.csv").write_text("user,item,time\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    (inp / "log.tsv").write_text("user\titem\ttime\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    for name in ("empty", "empty.csv", "empty.safetensors", "empty.txt"):
        (inp / name).write_bytes(b"")
    for name in ("garbage.bin", "garbage.csv", "garbage.safetensors", "garbage.txt"):
        (inp / name).write_bytes(rng.randbytes(4096))
    (inp / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}")
    lying = json.dumps({"x": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 16]}}).encode()
    (inp / "lying.safetensors").write_bytes(struct.pack("<Q", len(lying)) + lying + bytes(16))
    (inp / "notes.txt").write_text("keep me\n")
    (inp / "file.txt").write_text("a file\n")
    (inp / "userdir" / "notes.txt").write_text("mine\n")
    (inp / "ro" / "keep.txt").write_text("read-only\n")
    (inp / "fakeds" / "manifest.json").write_text("{not json")
    bundle = root / REC_BUNDLE
    if bundle.is_file():
        data = bundle.read_bytes()
        (inp / "bundle.safetensors").write_bytes(data)
        (inp / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    else:  # the bare template (no fixtures)
        (inp / "bundle.safetensors").write_bytes(rng.randbytes(64))
        (inp / "trunc.safetensors").write_bytes(rng.randbytes(32))
    os.symlink("../home/datasets/tiny-rec", inp / "link-dataset")
    os.symlink("bundle.safetensors", inp / "link-bundle.safetensors")
    os.symlink("nowhere-at-all", inp / "dangling")
    os.symlink("loop", inp / "loop")
    os.chmod(inp / "ro", 0o555)


# ------------------------------------------------------------------ the commands' declared options


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a command, as declared to click."""

    name: str
    flags: tuple[str, ...]  # () for an argument
    off: tuple[str, ...]  # the --no-X of a boolean flag
    kind: str  # flag, int, float, choice, path, str
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    multiple: bool = False
    argument: bool = False


def _param(p: Any) -> Param:
    argument = getattr(p, "param_type_name", "") == "argument"
    flags = () if argument else tuple(p.opts)
    off = tuple(getattr(p, "secondary_opts", None) or ())
    multiple = bool(getattr(p, "multiple", False))
    lo, hi = getattr(p, "min", None), getattr(p, "max", None)
    choices: tuple[str, ...] = ()
    td = getattr(p, "type_descriptor", None)
    if not argument and getattr(p, "is_flag", False):
        kind = "flag"
    elif td is not None:  # typer >= 0.29 (its own click): the declared annotation
        ann = td.annotation
        if td.is_list:
            ann = (typing.get_args(ann) or (str,))[0]
        if td.choices:
            kind, choices = "choice", tuple(str(getattr(c, "value", c)) for c in td.choices)
        elif td.is_path or td.is_file:
            kind = "path"
        else:
            kind = {bool: "flag", int: "int", float: "float"}.get(ann, "str")
    else:  # click's ParamType objects
        t = p.type
        tname = type(t).__name__
        lo, hi = getattr(t, "min", lo), getattr(t, "max", hi)
        if getattr(t, "choices", None):
            kind, choices = "choice", tuple(str(getattr(c, "value", c)) for c in t.choices)
        elif tname in ("IntRange", "IntParamType"):
            kind = "int"
        elif tname in ("FloatRange", "FloatParamType"):
            kind = "float"
        elif tname in ("Path", "File"):
            kind = "path"
        elif tname == "BoolParamType":
            kind = "flag"
        else:
            kind = "str"
    return Param(p.name, flags, off, kind, choices, lo, hi, multiple, argument)


def introspect() -> dict[str, list[Param]]:
    """Every command's parameters, read from the click command Typer builds from ``farzictl.app.app``."""
    import typer.main

    import farzictl.app

    group = typer.main.get_command(farzictl.app.app)
    return {name: [_param(p) for p in cmd.params] for name, cmd in group.commands.items()}


# ------------------------------------------------------------------ drawing values

INT_HUGE = [2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, int("9" * 40)]
INT_EXTREME = ["0", "-1", *map(str, INT_HUGE)]
INT_ODD = [
    "",
    " ",
    "1.5",
    "1e3",
    "0x10",
    "nan",
    "inf",
    "+1",
    "\uff11",
    "1_2",
    "abc",
    "-",
    "1 2",
]  # int() takes 3 of them
FLOAT_EXTREME = ["0", "-0.0", "-1", "1e-308", "5e-324", "1e308", "1.8e308", "-1e308", "inf", "-inf", "nan"]
FLOAT_EXTREME += ["-nan", str(2**63), "1e30", "-1e30", "1e-30", "9" * 40]
FLOAT_ODD = ["", "abc", "1e", "0x1p3", "1,5", "infinity", "NaN", " 1", "1_0", "--"]
STR_ODD = ["", " ", "-", "-x", "\t", "a" * 300, "\u00fc", "e\u0301", "x\ny", "$(echo hi)", "'", '"', "%s", "..", "."]
STR_ODD += ["/", "\x7f", "\u2603" * 100, "bogus", "NUL\x01"]

ODD_PATHS = [
    "inputs/nonexistent",
    "inputs/file.txt",  # a file where a directory is expected
    "inputs/file.txt/sub",  # a path inside a file
    f"inputs/{LONG_NAME}",  # a name over 255 bytes
    f"inputs/{LONG_NAME}/x",
    LONG_PATH,  # over PATH_MAX
    "inputs/ro",  # a read-only directory
    "inputs/ro/out",
    "home",  # the workspace itself
    ".",  # the current directory (the scratch root)
    "",
    "home/datasets/tiny-rec",  # the input dataset's directory
    "home/datasets",
    "home/trajectories/tiny-rec/sasrec",
    REC_BUNDLE,
    REC_MODEL,
    "inputs/link-dataset",  # a symlink to a directory
    "inputs/link-bundle.safetensors",
    "inputs/dangling",
    "inputs/loop",
    "inputs/userdir",  # a user's directory
    "inputs/notes.txt",  # a user's file
    "inputs/emptydir",
    "inputs",
    DEEP_PATH,
    "inputs/sp ace/\u00fc.out",
    "-",
    "~",
]
ODD_FILES = [
    "inputs/empty",
    "inputs/empty.safetensors",
    "inputs/garbage.bin",
    "inputs/garbage.safetensors",
    "inputs/trunc.safetensors",
    "inputs/huge-header.safetensors",
    "inputs/lying.safetensors",
    "inputs/garbage.csv",
    "inputs/empty.csv",
    "inputs/fakeds",
    "inputs/corpus.txt",
    "inputs/log.csv",
]

# options whose values set the amount of work: small typical values (and BASE below in every draw);
# TIME_SHAPED ones take a huge representable value only together with --plan
AMOUNT: dict[str, tuple[int, ...]] = {
    "runs": (1, 2),
    "every": (1, 2, 3),
    "max_steps": (1, 2, 4),
    "outer_steps": (0, 1, 2),
    "inner_steps": (1, 2),
    "samples": (1, 2, 3),
    "recipe_steps": (1, 2, 4),
    "select_every": (0, 1, 2),
    "meta_batch": (1, 2),
    "real_batch": (1, 4, 8),
    "syn_batch": (0, 1, 2),
    "batch_size": (1, 4, 8),
    "d_model": (4, 8),
    "n_layers": (1, 2),
    "max_len": (4, 8, 12),
    "latent_dim": (1, 4, 8),
    "n_heads": (1, 2),
    "synthetic_vocab": (5, 20),
    "synthetic_sequences": (10, 30),
    "vocab_size": (5, 50, 2000),
    "min_length": (2, 3),
    "omega_runs": (0, 1),
    "omega_min_step": (0, 2),
    "omega_max_step": (0, 2, 4),
    "mtt_offset": (1, 2),
    "checkpoint_every": (0, 1),
    "patience": (0, 1, 10),
    "eval_every": (0, 1, 2),
    "segment": (0, 1, 2),
    "recipe_batch": (0, 1, 4),
    "nproc": (1, 1, 1, 1, 2),
    "k": (1, 5, 10),
    "top_k": (0, 1, 3),
    "sequences": (0, 1, 3),
    "positions": (0, 1, 10),
    "epochs": (1, 2),
    "threads": (1, 2),
}
TIME_SHAPED = {"runs", "max_steps", "outer_steps", "inner_steps", "samples", "recipe_steps", "meta_batch", "epochs"}
LONG = 1000  # a time-shaped amount above this is a long run unless --plan

BASE: dict[str, dict[str, str]] = {  # tiny work in every draw, for the amount options it did not draw
    "prepare": {"synthetic_vocab": "20", "synthetic_sequences": "30"},
    "trajectories": {
        "runs": "1",
        "every": "2",
        "max_steps": "4",
        "batch_size": "8",
        "d_model": "8",
        "n_layers": "1",
        "max_len": "12",
    },
    "train-student": {"max_steps": "4", "batch_size": "8", "d_model": "8", "n_layers": "1", "max_len": "12"},
    "distill": {"budget": "2x4", "outer_steps": "2", "inner_steps": "2", "real_batch": "8", "recipe_steps": "4"},
}

FLOAT_TYPICAL: dict[str, tuple[str, ...]] = {
    "lr": ("1e-3", "0.01", "0.1"),
    "weight_decay": ("0", "1e-4", "0.01"),
    "dropout": ("0", "0.1", "0.5"),
    "tau": ("0.5", "1", "2"),
    "inner_momentum": ("0", "0.5", "0.9"),
    "grad_clip": ("0", "1", "5"),
    "init_mix": ("0", "0.2", "1"),
    "rank_timeout": ("30", "300"),
}

DATASETS = ("tiny-rec", "tiny-lm", "home/datasets/tiny-rec", "home/datasets/tiny-lm", "inputs/link-dataset")
ODD_DATASETS = ("nope", "", ".", "..", "home", "inputs/garbage.bin", "inputs/emptydir", "inputs/fakeds")
ODD_DATASETS += ("inputs/file.txt/sub", LONG_NAME, f"inputs/{LONG_NAME}", "-", "TINY-REC", "tiny-rec/", "a b", "x" * 65)
BUNDLES = (REC_BUNDLE, LM_BUNDLE, "inputs/bundle.safetensors", "inputs/link-bundle.safetensors")
STR_TYPICAL: dict[str, tuple[str, ...]] = {
    "budget": ("2x4", "1x2", "3x5", "2X4", "2*4"),
    "data": ("full", "head:5", "random:5", "head:1", REC_BUNDLE, "inputs/bundle.safetensors"),
    "model": ("sasrec", "gru4rec", "fmlp", "transformer", "rnn"),
    "device": ("cpu",),
    "metric": ("", "hr@10", "ndcg@10", "ppl_corpus"),
    "to": ("jsonl", "txt", "csv", "parquet"),
    "decode": ("argmax", "sample"),
    "split": ("train", "valid", "test"),
    "stratify": ("popularity",),
    "separator": (",", "\t", ";"),
    "user_col": ("user",),
    "item_col": ("item",),
    "time_col": ("time",),
    "as_name": ("fz", "tiny-rec", "tiny-lm", "ok_name.1"),
    "mirror": ("http://127.0.0.1:9/",),
    "name": ("synthetic-rec", "synthetic-lm", "text", "interactions", "ptb-offline", "ptb", "ml-100k", "netflix"),
    "dataset": DATASETS,
    "task": ("lm", "rec"),
}
STR_EXTREME: dict[str, tuple[str, ...]] = {
    "budget": ("0x4", "4x0", "1x1", "-1x4", "4x-1", "999999999x999999999", "1x999999999", "999999999x2", "1e3x4"),
    "data": ("head:0", "head:-1", "random:0", "head:2147483648", "head:" + "9" * 40, "random:1.5", "head:", LM_BUNDLE),
    "model": ("SASREC", "", "bogus", "transformer", "sasrec"),
    "device": ("cuda", "cuda:0", "cuda:-1", "cuda:99", "mps", "meta", "", "CPU", "cpu:0", "cuda:x"),
    "metric": ("hr@0", "hr@-1", "hr@" + "9" * 20, "bogus", "ndcg@", "xent"),
    "to": ("xml", "", "JSONL"),
    "separator": ("", "ab", "\\t", "\n"),
    "as_name": ("a/b", "../x", "", ".hidden", "x" * 65, "-", "tiny rec"),
    "mirror": ("file:///nonexistent/", "not a url", "", "ftp://127.0.0.1:9/", "http://127.0.0.1:9/" + "a" * 300),
    "name": ("bogus", "", "../x", "ml-1m", "amazon-magazine", "SYNTHETIC-REC"),
    "dataset": ODD_DATASETS,
}
DOWNLOADS = ("ptb", "ml-100k", "ml-1m", "amazon-magazine")
PATH_TYPICAL: dict[str, tuple[str, ...]] = {
    "home": ("home",),
    "trajectories": ("home/trajectories/tiny-rec/sasrec", "home/trajectories/tiny-lm/transformer"),
    "source": ("inputs/ptb",),
    "train": ("inputs/corpus.txt",),
    "valid": ("inputs/corpus.txt",),
    "test": ("inputs/corpus.txt",),
    "path": ("inputs/log.csv", "inputs/log.tsv"),
    "bundle": BUNDLES,
    "model_path": (REC_MODEL, LM_MODEL, f"{REC_MODEL}/model.safetensors"),
}
OUT_TYPICAL: dict[str, tuple[str, ...]] = {
    "distill": ("out/b.safetensors", "out/new/b.safetensors", "out/b"),
    "export": ("out/e.jsonl", "out/e.csv", "out/e.txt", "out/e.parquet", "out/e", "out/new/e.jsonl"),
}


@dataclasses.dataclass
class Draw:
    """One command line, and what the checks need to know about it."""

    index: int
    seed: int
    command: str
    argv: list[str]  # farzictl's arguments
    values: dict[str, str]  # parameter name -> the value given (flags: "on" / "off")
    env: dict[str, str | None] = dataclasses.field(default_factory=dict)  # overrides; None unsets

    def shell(self) -> str:
        pre = " ".join("-u " + k if v is None else f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return ("env " + pre + " " if pre else "") + shlex.join(["farzictl", *self.argv])


def _flag(p: Param) -> str:
    long = [f for f in p.flags if f.startswith("--")]
    return (long or list(p.flags))[0]


class Drawer:
    """Seeded command lines from the commands' declared parameters: draw ``i`` of seed ``s`` is the same
    command line whatever else was drawn (its own ``random.Random``)."""

    def __init__(self, params: dict[str, list[Param]], seed: int) -> None:
        self.params = params
        self.seed = seed

    def draw(self, index: int) -> Draw:
        rng = random.Random(f"farzi-cli-fuzz:{self.seed}:{index}")
        if index >= READ_ONLY_BASE:
            command = rng.choice([c for c in READ_ONLY if c in self.params])
        else:
            names = [c for c in WRITING if c in self.params]
            command = rng.choices(names, weights=[WEIGHTS.get(c, 1.0) for c in names])[0]
        return self.draw_command(index, command, rng)

    def draw_command(self, index: int, command: str, rng: random.Random) -> Draw:
        params = self.params[command]
        values: dict[str, str] = {}
        tokens: list[tuple[Param, list[str]]] = []
        for p in params:
            if p.argument:
                values[p.name] = self._value(command, p, rng, self._mode(rng, 0.85))
        options = [p for p in params if not p.argument]
        k = min(len(options), rng.choice((0, 1, 1, 2, 2, 2, 3, 3, 4, 6)))
        for p in rng.sample(options, k):
            if p.kind == "flag":
                mode = self._mode(rng, 0.95)
                on = p.off[0] if p.off and rng.random() < 0.3 else _flag(p)
                values[p.name] = "off" if on in p.off else "on"
                tokens.append((p, [on if mode != "odd" else on + "=" + rng.choice(("1", "yes", "maybe", ""))]))
                continue
            repeat = rng.choice((1, 1, 2, 3)) if p.multiple else 1
            given = [self._value(command, p, rng, self._mode(rng, 0.7)) for _ in range(repeat)]
            values[p.name] = given[-1]
            tokens.append((p, [t for v in given for t in self._option(p, v, rng)]))
        self._keep_small(command, params, values, tokens)
        env: dict[str, str | None] = {}
        if rng.random() < 0.04:
            env["FARZI_HOME"] = None  # the default workspace, ~/.farzi (under the draw's $HOME)
        argv = [command]
        late: list[str] = []
        for p in params:
            if p.argument:
                v = values[p.name]
                (late if v.startswith("-") else argv).append(v)
        for _, t in tokens:
            argv += t
        if late:
            argv += ["--", *late]
        return Draw(index, self.seed, command, argv, values, env)

    @staticmethod
    def _mode(rng: random.Random, typical: float) -> str:
        r = rng.random()
        return "typical" if r < typical else "extreme" if r < typical + (1 - typical) * 0.6 else "odd"

    @staticmethod
    def _option(p: Param, value: str, rng: random.Random) -> list[str]:
        flag = _flag(p)
        if value.startswith("-") or rng.random() < 0.3:
            return [f"{flag}={value}"]
        return [flag, value]

    def _keep_small(
        self, command: str, params: list[Param], values: dict[str, str], tokens: list[tuple[Param, list[str]]]
    ) -> None:
        """Tiny work whatever was drawn: BASE for the amount options not drawn, --plan with a huge step count,
        a local source for the sources that download."""
        by_name = {p.name: p for p in params}
        for name, value in BASE.get(command, {}).items():
            if name in by_name and name not in values:
                values[name] = value
                tokens.append((by_name[name], [_flag(by_name[name]), value]))
        long = [n for n in TIME_SHAPED if n in values and _as_int(values[n]) is not None and _as_int(values[n]) > LONG]
        if long and "plan" in by_name and values.get("plan") != "on":
            for i, (p, _) in enumerate(tokens):
                if p.name == "plan":
                    del tokens[i]
                    break
            values["plan"] = "on"
            tokens.append((by_name["plan"], ["--plan"]))
        elif long:  # no --plan on this command: a huge count is a long run, not a defect
            for i, (p, _) in enumerate(tokens):
                if p.name in long:
                    values[p.name] = "-1"
                    tokens[i] = (p, [f"{_flag(p)}=-1"])
        if command == "prepare":
            name = values.get("name", "")
            extra: list[str] = []
            if name == "text" and "train" not in values:
                extra = ["--train", "inputs/corpus.txt"]
            elif name == "interactions" and "path" not in values:
                extra = ["--path", "inputs/log.csv"]
            elif name in ("ptb", "ptb-offline") and "source" not in values and "mirror" not in values:
                extra = ["--source", "inputs/ptb"]
            elif name in ("netflix", "ml-100k") and "source" not in values and "mirror" not in values:
                extra = ["--source", "inputs/userdir"]
            elif name in DOWNLOADS and "source" not in values and "mirror" not in values:
                extra = ["--mirror", "http://127.0.0.1:9/"]
            if extra and extra[0][2:] in by_name:
                values[extra[0][2:]] = extra[1]
                tokens.append((by_name[extra[0][2:]], extra))
            if values.get("mirror", "").startswith(("http", "ftp")) and "127.0.0.1" not in values["mirror"]:
                raise AssertionError("a drawn mirror would leave the machine")

    def _value(self, command: str, p: Param, rng: random.Random, mode: str) -> str:
        name = p.name
        if p.kind == "path" or name in ("dataset",):
            return self._path(command, p, rng, mode)
        if p.kind == "choice":
            if mode == "typical":
                return rng.choice(p.choices)
            if mode == "extreme":
                return rng.choice(p.choices).upper() + rng.choice(("", " ", "s"))
            return rng.choice(STR_ODD)
        if p.kind == "int":
            return self._int(p, rng, mode)
        if p.kind == "float":
            if mode == "typical":
                pool = FLOAT_TYPICAL.get(name) or tuple(str(x) for x in (0.0, 0.5, 1.0, 0.01, 10.0))
                return rng.choice(pool)
            pool = list(FLOAT_EXTREME) + [str(x) for x in (p.lo, p.hi) if x is not None]
            return rng.choice(pool if mode == "extreme" else FLOAT_ODD)
        if mode == "typical" and name in STR_TYPICAL:
            return rng.choice(STR_TYPICAL[name])
        if mode == "extreme" and name in STR_EXTREME:
            return rng.choice(STR_EXTREME[name])
        if mode == "typical":
            return rng.choice(("x", "value", "a-b_c.1"))
        return rng.choice(STR_ODD + ODD_PATHS[:6])

    def _int(self, p: Param, rng: random.Random, mode: str) -> str:
        lo, hi = p.lo, p.hi
        if mode == "typical":
            if p.name in AMOUNT:
                return str(rng.choice(AMOUNT[p.name]))
            if p.name == "seed":
                return rng.choice(("0", "1", "7", "123456789"))
            if lo is not None or hi is not None:
                a = int(lo) if lo is not None else int(hi) - 2
                pool = [a, a + 1, a + 2]
                if hi is not None:
                    pool = [x for x in pool if x <= hi] + [int(hi)]
                return str(rng.choice(pool))
            return rng.choice(("0", "1", "2", "3"))
        if mode == "odd":
            return rng.choice(INT_ODD)
        pool = list(INT_EXTREME)
        for b, step in ((lo, -1), (hi, 1)):
            if b is not None:
                pool += [str(int(b)), str(int(b) + step)] * 3  # the bounds and one past them, often
        return rng.choice(pool)

    def _path(self, command: str, p: Param, rng: random.Random, mode: str) -> str:
        name = p.name
        if mode == "typical":
            if name == "out":
                return rng.choice(OUT_TYPICAL.get(command, ("out/new", "out/new/deeper", "out")))
            if name == "dataset":
                return rng.choice(DATASETS)
            if name in PATH_TYPICAL:
                return rng.choice(PATH_TYPICAL[name])
            return rng.choice(("out/x", "inputs/corpus.txt"))
        if name == "dataset":
            return rng.choice(ODD_DATASETS + tuple(ODD_FILES[:4]) + tuple(ODD_PATHS[:8]))
        return rng.choice(ODD_PATHS if mode == "extreme" else ODD_FILES + ODD_PATHS[:6])


def _as_int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


# ------------------------------------------------------------------ what a draw may write, what it must keep


def _norm(root: str, value: str) -> list[str]:
    """A path value (relative to the draw's directory ``root``) as written and as resolved, relative to root;
    nothing for a location outside root."""
    out: list[str] = []
    joined = os.path.join(root, value)
    for q, base in ((os.path.normpath(joined), root), (_realpath(joined), os.path.realpath(root))):
        if q is None:
            continue
        rel = os.path.relpath(q, base)
        if rel != ".." and not rel.startswith("../") and rel not in out:
            out.append(rel)
    return out


def _realpath(path: str) -> str | None:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None


def _pat(rel: str) -> str:
    """A path as an fnmatch pattern that matches it alone."""
    return "." if rel == "." else glob.escape(rel)


def _parts(pat: str) -> list[str]:
    return [] if pat == "." else pat.split("/")


def _prefix_match(short: list[str], long: list[str]) -> bool:
    """Whether the pattern components ``short`` match the first components of ``long``."""
    return len(short) <= len(long) and all(
        fnmatch.fnmatchcase(b, a) or fnmatch.fnmatchcase(a, b) for a, b in zip(short, long, strict=False)
    )


def _under(rel: str, pat: str) -> bool:
    """``rel`` is ``pat`` or inside it."""
    return pat == "." or fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(rel, pat + "/*")


@dataclasses.dataclass
class Scope:
    """What a draw may change (``outputs``, fnmatch patterns relative to the draw's directory) and what it
    must keep: ``roots`` (never an output or inside one) and ``inputs`` (also nothing existing inside
    them replaced)."""

    outputs: list[str]
    roots: list[str]
    inputs: list[str]

    def granted(self, before: dict[str, tuple]) -> list[str]:
        """The outputs that grant something: not a root or an input, not holding one, not an existing
        entry inside an input."""
        out = []
        for o in self.outputs:
            parts = _parts(o)
            if any(_prefix_match(parts, _parts(q)) for q in self.roots + self.inputs):
                continue
            if any(_under(k, o) for k in before) and any(
                _prefix_match(_parts(q), parts) and len(_parts(q)) < len(parts) for q in self.inputs
            ):
                continue
            out.append(o)
        return out

    def allows(self, rel: str, change: str, kind: str, granted: list[str]) -> bool:
        for o in granted:
            if _under(rel, o):
                return True
            parent, _, name = o.rpartition("/")
            if _under(rel, (parent + "/" if parent else "") + "." + name + ".*"):
                return True  # .NAME.lock, .NAME.tmp-*, .NAME.runs/: the output's own hidden siblings
            if change == "added" and kind == "dir" and _prefix_match(_parts(rel), _parts(o)):
                return True  # a parent directory the output needed
        return False


COMPANIONS = {"distill": (".log.jsonl", ".state.safetensors")}


def _with_suffix(rel: str, suffix: str) -> str | None:
    try:
        return str(Path(rel).with_suffix(suffix))
    except ValueError:
        return None


def _dataset_name(root: str, value: str) -> str | None:
    """The name a dataset argument resolves to: a directory's manifest name, else the name itself."""
    path = os.path.join(root, value)
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        if os.path.isfile(os.path.join(path, "manifest.json")):
            with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
                name = json.load(f).get("name")
            return name if isinstance(name, str) else None
    return value if _valid_name(value) else None


def _valid_name(name: str) -> bool:
    try:
        from farzi.workspace import check_name

        check_name(name)
        return True
    except Exception:  # noqa: BLE001 - any refusal: not a workspace name
        return False


def declared_outputs(draw: Draw, root: str) -> Scope:
    """The draw's outputs (its --out, else its command's default location in the workspace, with the
    companions), and what it must keep: the scratch root's top entries, the workspace and its inputs."""
    v = draw.values
    cmd = draw.command
    env_home = "home" if draw.env.get("FARZI_HOME", "") is not None else "userhome/.farzi"
    home = v.get("home", env_home) or "."
    homes = _norm(root, home)
    roots = [".", "home", "inputs", "userhome", "tmp", *homes]
    outputs: list[str] = []
    inputs: list[str] = []

    def add(rel_value: str, into: list[str], literal: bool = True) -> None:
        for r in _norm(root, rel_value) if literal else [rel_value]:
            into.append(_pat(r) if literal else r)

    def in_home(*parts: str) -> list[str]:
        return [("" if h == "." else glob.escape(h) + "/") + "/".join(parts) for h in homes]

    ds = None
    for key in ("dataset",):
        if key in v:
            value = v[key]
            ds = _dataset_name(root, value)
            if os.path.lexists(os.path.join(root, value)):
                add(value, inputs)
            elif ds is not None:
                inputs += in_home("datasets", glob.escape(ds))
    for key, value in v.items():  # every other existing path the draw names is read, never written
        if key not in ("out", "home", "dataset") and value not in ("", "on", "off", ".") and len(value) < 4000:
            with contextlib.suppress(OSError, ValueError):
                if os.path.lexists(os.path.join(root, value)):
                    add(value, inputs)
    plan = v.get("plan") == "on"
    out = v.get("out")
    targets: list[str] = []
    if out is not None:
        targets = [_pat(r) for r in _norm(root, out)]
    elif cmd == "prepare":
        name = v.get("as_name") or v.get("name", "")
        if _valid_name(name):
            targets = in_home("datasets", glob.escape(name))
    elif cmd == "trajectories" and ds is not None:
        model = v.get("model")
        targets = in_home("trajectories", glob.escape(ds), glob.escape(model) if model and _valid_name(model) else "*")
    elif cmd == "train-student" and ds is not None:
        student = _student_name(v)
        targets = in_home("models", glob.escape(ds), student) if student else []
    elif cmd == "distill" and ds is not None:
        targets = in_home("bundles", glob.escape(ds), _bundle_name(v))
    elif cmd == "export" and "bundle" in v:
        suffix = _export_suffix(v.get("to", "jsonl"))
        if suffix is not None:
            for r in _norm(root, v["bundle"]):
                t = _with_suffix(r, suffix)
                if t is not None:
                    targets.append(_pat(t))
    if cmd == "distill" and v.get("objective", "farzi") != "mm" and "trajectories" not in v and ds is not None:
        inputs += in_home("trajectories", glob.escape(ds), "*")  # the default teacher trajectories
    if cmd in READ_ONLY or plan:
        return Scope([], roots, inputs)
    if cmd == "prepare":
        outputs += in_home("downloads")  # the download cache
    for t in targets:
        outputs.append(t)
        for suffix in COMPANIONS.get(cmd, ()):
            c = _with_suffix(t, suffix)
            if c is not None:
                outputs.append(c)
        if cmd == "export":
            outputs.append(t + ".json")
    return Scope(outputs, roots, inputs)


def _student_name(v: dict[str, str]) -> str | None:
    model = v.get("model")
    model = glob.escape(model) if model and _valid_name(model) else "*"
    try:
        from farzi.student import parse_spec

        label = glob.escape(parse_spec(v.get("data", "full")).label().replace(":", "-"))
    except Exception:  # noqa: BLE001 - a spec it refuses writes nothing
        return None
    seed = _as_int(v.get("seed", "0"))
    return f"{model}-{label}-s{'*' if seed is None else seed}"


def _bundle_name(v: dict[str, str]) -> str:
    try:
        from farzi.distill.config import parse_budget

        mu, xi = parse_budget(v.get("budget", "50x50"))
    except Exception:  # noqa: BLE001
        return "farzi-*.safetensors"
    seed = _as_int(v.get("seed", "0"))
    return f"farzi-{mu}x{xi}-s{'*' if seed is None else seed}.safetensors"


def _export_suffix(to: str) -> str | None:
    try:
        from farzi.export import SUFFIX

        return SUFFIX.get(to)
    except ImportError:
        return "." + to if to.isalnum() else None


# ------------------------------------------------------------------ snapshots and checks


def snapshot(root: str, skip: tuple[str, ...] = ("tmp",)) -> dict[str, tuple]:
    """Every entry under ``root`` (relative path -> type, mode, size, mtime_ns, inode, or link target),
    symlinks not followed, the top-level ``skip`` entries left out. Directories: type and mode alone."""
    out: dict[str, tuple] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel) if rel else root))
        except OSError as exc:
            out[rel or "."] = ("unreadable", exc.errno)
            continue
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if not rel and e.name in skip:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                out[r] = ("unreadable", exc.errno)
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                with contextlib.suppress(OSError):
                    out[r] = ("link", os.readlink(e.path))
            elif stat.S_ISDIR(st.st_mode):
                out[r] = ("dir", mode)
                stack.append(r)
            elif stat.S_ISREG(st.st_mode):
                out[r] = ("file", mode, st.st_size, st.st_mtime_ns, st.st_ino)
            else:
                out[r] = ("other", mode, stat.S_IFMT(st.st_mode))
    return out


def diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[tuple[str, str, str]]:
    """(change, path, kind) for every entry added, removed or changed."""
    out = []
    for k in sorted(before.keys() | after.keys()):
        b, a = before.get(k), after.get(k)
        if b == a:
            continue
        change = "added" if b is None else "removed" if a is None else "changed"
        out.append((change, k, (a or b)[0]))
    return out


TEMP_RE = re.compile(r"^\..+\.(tmp-|old-|part-).*|^\..+\.lock$")
TRACEBACK = "Traceback (most recent call last)"


@dataclasses.dataclass
class Outcome:
    """What one run of a draw gave."""

    rc: int  # exit status; -N: killed by signal N
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    stray_processes: bool = False


@dataclasses.dataclass
class Failure:
    cls: str  # timeout, traceback, exit-status, error-line, touched, leftover-temp, leftover-process, harness
    signature: str  # what groups failures of one cause
    detail: str


def check(
    draw: Draw,
    outcome: Outcome,
    scope: Scope,
    before: dict[str, tuple],
    after: dict[str, tuple],
    tmp_after: list[str],
) -> list[Failure]:
    """Every rule the draw broke."""
    fails: list[Failure] = []
    err, out = outcome.stderr, outcome.stdout
    if outcome.rc == EXIT_HARNESS and "FUZZ-HARNESS-ERROR" in err:
        return [Failure("harness", "the harness could not set up the child", _tail(err))]
    if outcome.timed_out:
        opts = sorted({a.split("=")[0] for a in draw.argv if a.startswith("--")})
        said = f"; stderr so far:\n{_tail(err, 4)}" if err.strip() else ""
        fails.append(
            Failure("timeout", f"{draw.command} {' '.join(opts)}", f"no exit within {outcome.seconds:.0f} s{said}")
        )
    elif outcome.rc not in (0, 2):
        how = f"killed by {_signame(-outcome.rc)}" if outcome.rc < 0 else f"exit {outcome.rc}"
        fails.append(Failure("exit-status", f"{draw.command}: {how}", _tail(err, 2)))
    if TRACEBACK in err or TRACEBACK in out:
        fails.append(Failure("traceback", f"{draw.command}: {_exception_line(err + out)}", _tail(err or out)))
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    if not outcome.timed_out and outcome.rc == 2 and len(errors) != 1:
        fails.append(Failure("error-line", f"exit 2 with {len(errors)} 'error: ' lines", _tail(err)))
    if outcome.rc == 0 and errors:
        fails.append(Failure("error-line", "exit 0 with an 'error: ' line", _tail(err)))
    granted = scope.granted(before)
    bad = [(c, p, k) for c, p, k in diff(before, after) if not scope.allows(p, c, k, granted)]
    if bad:
        areas = sorted({f"{c} {_area(p)}" for c, p, _ in bad})
        listed = "\n".join(f"{c}: {_short(p)}" for c, p, _ in bad[:12]) + (
            f"\n... {len(bad)} in all" if bad[12:] else ""
        )
        fails.append(Failure("touched", f"{draw.command}: {', '.join(areas)}", listed))
    if not outcome.timed_out:  # a killed run may leave its temporaries; the next run removes them
        new = [p for p in after if p not in before and TEMP_RE.match(p.rpartition("/")[2])]
        left = [f"$TMPDIR/{n}" for n in tmp_after] + new
        if left:
            kinds = sorted({_temp_kind(n) for n in left})
            fails.append(Failure("leftover-temp", f"{draw.command}: {', '.join(kinds)}", "\n".join(map(_short, left))))
        if outcome.stray_processes:
            fails.append(Failure("leftover-process", draw.command, "processes of the draw outlived it"))
    return fails


def _temp_kind(path: str) -> str:
    """``.b.safetensors.tmp-x1y2`` -> ``.NAME.tmp-*``; ``$TMPDIR/torchinductor_root`` -> ``$TMPDIR/torchinductor_*``."""
    if path.startswith("$TMPDIR/"):
        return "$TMPDIR/" + re.sub(r"([-_])[^-_]*$", r"\1*", path[8:])
    name = path.rpartition("/")[2]
    m = re.match(r"^\..+\.(tmp-|old-|part-)", name)
    return f".NAME.{m.group(1)}*" if m else ".NAME.lock"


def _short(p: str) -> str:
    return re.sub(r"([^/]{40})[^/]{20,}", r"\1...", p)


def _area(p: str) -> str:
    parts = p.split("/")
    return "/".join(_short(x) for x in parts[:3]) + ("/..." if len(parts) > 3 else "")


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _exception_line(text: str) -> str:
    block = text[text.rfind(TRACEBACK) :].splitlines()
    lines = [x for x in block[1:] if x and not x.startswith((" ", "\t", "Traceback", "During handling"))]
    line = lines[-1] if lines else "?"
    line = re.sub(r"'[^']*'|\"[^\"]*\"", "'X'", line)  # KeyError: 'hr@10' and KeyError: 'xent': one cause
    line = re.sub(r"/[^\s'\"]*", "PATH", line)
    return re.sub(r"\d+", "N", line)[:160]


def _tail(text: str, n: int = 8) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    return "\n".join(x[:300] for x in lines[-n:])


# ------------------------------------------------------------------ running a draw


@dataclasses.dataclass
class Limits:
    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int = DEFAULT_MEMORY_MB


def _apply_limits(limits: Limits) -> None:
    mem = limits.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    cpu = int(limits.timeout * 3) + 30
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _die_with_parent()


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _cap_spawns(limit: int = MAX_SPAWNS) -> None:
    """More than ``limit`` child processes in one draw fail as under a process limit (EAGAIN)."""
    count = [0]
    original = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def capped(self: Any, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] > limit:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return original(self, *args, **kwargs)

    subprocess.Popen._execute_child = capped  # type: ignore[attr-defined]


def boot() -> None:
    """The subprocess mode's child: ``python -m farzictl`` with the spawn cap."""
    _cap_spawns()
    sys.argv = ["farzictl", *sys.argv[1:]]
    from farzictl.app import entry

    entry()


def _run_entry(argv: list[str]) -> int:
    """``python -m farzictl ARGV`` in this process, down to how the interpreter reports and exits."""
    from farzictl.app import entry

    sys.argv = ["farzictl", *argv]
    code = 0
    try:
        entry()
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - what the interpreter prints for an uncaught exception
        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        import threading

        threading._shutdown()  # type: ignore[attr-defined]  # the interpreter waits for non-daemon threads
    with contextlib.suppress(BaseException):
        import atexit

        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code & 0xFF


@dataclasses.dataclass
class Job:
    """A command line to run in a directory, and where its output goes."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    out_path: str
    err_path: str
    dump_modules: str | None = None
    pid: int = 0
    proc: subprocess.Popen | None = None
    started: float = 0.0
    payload: Any = None


def _child(job: Job, limits: Limits) -> typing.NoReturn:
    code = EXIT_HARNESS
    try:
        try:
            os.setsid()
            for fd, path, flags in (
                (0, os.devnull, os.O_RDONLY),
                (1, job.out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                (2, job.err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            ):
                new = os.open(path, flags, 0o644)
                os.dup2(new, fd)
                os.close(new)
            os.chdir(job.cwd)
            os.environ.clear()
            os.environ.update(job.env)
            import tempfile

            tempfile.tempdir = None
            for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _apply_limits(limits)
            _cap_spawns()
            import torch

            torch.set_num_threads(1)
        except BaseException:  # noqa: BLE001
            print("FUZZ-HARNESS-ERROR", file=sys.stderr)
            traceback.print_exc()
            raise
        code = _run_entry(job.argv)
        if job.dump_modules:
            with open(job.dump_modules, "w") as f:
                f.write("\n".join(sorted(sys.modules)))
    finally:
        os._exit(code)


class Runner:
    """Runs jobs, ``jobs`` at a time, each in a forked child of this process (``fork``) or in a fresh
    ``python -c`` (``subprocess``); kills a job's whole session at the timeout."""

    def __init__(self, mode: str = "fork", jobs: int = 2, limits: Limits | None = None) -> None:
        if mode not in ("fork", "subprocess"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.jobs = max(1, jobs)
        self.limits = limits or Limits()

    def _start(self, job: Job) -> None:
        job.started = time.monotonic()
        if self.mode == "fork":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(job, self.limits)
            job.pid = pid
            return
        boot_code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import fuzz_harness; fuzz_harness.boot()"
        limits = self.limits
        with open(job.out_path, "wb") as out, open(job.err_path, "wb") as err:
            job.proc = subprocess.Popen(
                [sys.executable, "-c", boot_code, *job.argv],
                cwd=job.cwd,
                env=job.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=lambda: _apply_limits(limits),
            )
        job.pid = job.proc.pid

    def _poll(self, job: Job) -> int | None:
        if job.proc is not None:
            return job.proc.poll()
        pid, status = os.waitpid(job.pid, os.WNOHANG)
        return None if pid == 0 else os.waitstatus_to_exitcode(status)

    def _kill(self, job: Job) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGKILL)

    def _stray(self, job: Job) -> bool:
        """Whether processes of the job's session outlive it (given a second to go); kills them."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                os.killpg(job.pid, 0)
            except (ProcessLookupError, PermissionError):
                return False
            time.sleep(0.05)
        self._kill(job)
        return True

    def run(self, jobs: list[Job], before: Any = None, after: Any = None) -> None:
        """Run every job; ``before(job)`` just before it starts, ``after(job, outcome)`` once it is done."""
        pending = collections.deque(jobs)
        running: list[Job] = []
        while pending or running:
            while pending and len(running) < self.jobs:
                job = pending.popleft()
                if before is not None:
                    before(job)
                self._start(job)
                running.append(job)
            time.sleep(0.01)
            for job in list(running):
                rc = self._poll(job)
                timed_out = False
                if rc is None:
                    if time.monotonic() - job.started < self.limits.timeout:
                        continue
                    self._kill(job)
                    rc = (
                        job.proc.wait()
                        if job.proc is not None
                        else os.waitstatus_to_exitcode(os.waitpid(job.pid, 0)[1])
                    )
                    timed_out = True
                seconds = time.monotonic() - job.started
                stray = False if timed_out else self._stray(job)
                if timed_out:
                    self._kill(job)
                running.remove(job)
                outcome = Outcome(rc, _read(job.out_path), _read(job.err_path), seconds, timed_out, stray)
                if after is not None:
                    after(job, outcome)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    if len(data) > 200_000:
        data = data[:20_000] + b"\n[...]\n" + data[-100_000:]
    return data.decode("utf-8", "replace")


# ------------------------------------------------------------------ a session


def child_env(root: str, work: str, overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "VIRTUAL_ENV")}
    env.update(QUIET_ENV)
    env.update(
        HOME=os.path.join(root, "userhome"),
        FARZI_HOME=os.path.join(root, "home"),
        TMPDIR=os.path.join(root, "tmp"),
        MPLCONFIGDIR=os.path.join(work, "mpl"),
        XDG_CACHE_HOME=os.path.join(work, "cache"),
        PYTHONPATH=os.environ.get("PYTHONPATH") or str(REPO),
    )
    for k, v in (overrides or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _rmtree(path: str) -> None:
    def fix(func: Any, p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        with contextlib.suppress(OSError):
            func(p)

    shutil.rmtree(path, onerror=fix)  # onerror: 3.10 has no onexc


def _threads() -> list[str]:
    names = []
    for t in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
    return names


# not imported ahead in the fork server: torch._dynamo's import makes $TMPDIR/torchinductor_USER, a side
# effect each draw must show (and that family is most of the lazy import time anyway)
NO_WARM = (
    "_remote_module",
    "torch._dynamo",
    "torch._inductor",
    "torch._functorch",
    "torch._higher_order_ops",
    "torch._decomp",
    "torch._export",
    "torch.export",
    "torch._subclasses",
    "torch._prims",
    "torch._refs",
    "torch.fx.experimental",
    "torch.onnx",
    "torch.utils._sympy",
    "torch._numpy",
    "sympy",
    "mpmath",
)


class Session:
    """One fuzzing session: the template, the runner, the draws and their verdicts."""

    def __init__(
        self, work: Path, mode: str = "fork", jobs: int = 2, limits: Limits | None = None, log: Any = None
    ) -> None:
        self.work = Path(work).resolve()
        self.template = self.work / "template"
        self.draws_dir = self.work / "draws"
        self.logs = self.work / "logs"
        for d in (self.draws_dir, self.logs, self.work / "mpl", self.work / "cache"):
            d.mkdir(parents=True, exist_ok=True)
        self.runner = Runner(mode, jobs, limits)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.notes: list[str] = []

    # -------------------------------------------------------------- the template
    def build(self, bare: bool = False) -> None:
        t0 = time.monotonic()
        if self.template.exists():
            _rmtree(str(self.template))
        self.template.mkdir(parents=True)
        root = str(self.template)
        for d in ("home", "userhome", "tmp"):
            (self.template / d).mkdir()
        if not bare:
            dumps: list[str] = []
            for wave in FIXTURES:
                jobs = []
                for i, argv in enumerate(wave):
                    dump = str(self.logs / f"modules-{len(dumps)}-{i}.txt") if self.runner.mode == "fork" else None
                    if dump:
                        dumps.append(dump)
                    jobs.append(
                        Job(argv, root, child_env(root, str(self.work)), *self._logs(f"fixture-{i}"), dump_modules=dump)
                    )
                failed: list[str] = []
                self.runner.run(
                    jobs,
                    after=lambda job, o, failed=failed: (
                        failed.append(f"{shlex.join(job.argv)}: rc {o.rc}\n{o.stderr}") if o.rc != 0 else None
                    ),
                )
                if failed:
                    raise RuntimeError("building the fuzz fixtures failed:\n" + "\n".join(failed))
            self._warm(dumps)
        write_inputs(self.template)
        left = os.listdir(self.template / "tmp")
        if left:  # the draws would find it too; the template must start clean
            self.notes.append(f"building the fixtures left in $TMPDIR: {left}")
            for name in left:
                _rmtree(str(self.template / "tmp" / name))
        self.log(f"fuzz: template built in {time.monotonic() - t0:.1f} s ({'bare' if bare else 'tiny data'})")

    def _warm(self, dumps: list[str]) -> None:
        """Import here what the fixture runs imported lazily (no torch or polars work: imports alone), so
        that each forked draw does not import it again. Thread count checked before and after."""
        before = _threads()
        names: set[str] = set()
        for d in dumps:
            with contextlib.suppress(OSError):
                names |= set(Path(d).read_text().split())
        import importlib

        for name in sorted(names - set(sys.modules)):
            if "__main__" in name or name.startswith(NO_WARM) or name in ("antigravity", "this"):
                continue
            with contextlib.suppress(BaseException):
                importlib.import_module(name)
        after = _threads()
        if len(after) > len(before):
            self.notes.append(f"warm imports started threads: {before} -> {after}")
        if "torch._dynamo" in sys.modules:
            self.notes.append("warm imports loaded torch._dynamo: its side effects on $TMPDIR go unseen when forked")

    def _logs(self, tag: str) -> tuple[str, str]:
        return str(self.logs / f"{tag}.out"), str(self.logs / f"{tag}.err")

    # -------------------------------------------------------------- draws
    def run_draws(self, draws: list[Draw], progress_every: int = 50, keep: Path | None = None) -> list[dict]:
        """Run each draw in a fresh copy of the template; return one record per draw."""
        records: list[dict] = []
        t0 = time.monotonic()
        state: dict[int, tuple] = {}

        def before(job: Job) -> None:
            d: Draw = job.payload
            r = job.cwd
            if os.path.exists(r):
                _rmtree(r)
            shutil.copytree(self.template, r, symlinks=True)
            scope = declared_outputs(d, r)
            state[d.index] = (scope, snapshot(r))

        def after(job: Job, outcome: Outcome) -> None:
            d: Draw = job.payload
            r = job.cwd
            scope, snap_before = state.pop(d.index)
            snap_after = snapshot(r)
            tmp = os.path.join(r, "tmp")
            tmp_after = sorted(os.listdir(tmp)) if os.path.isdir(tmp) else ["(TMPDIR removed)"]
            fails = check(d, outcome, scope, snap_before, snap_after, tmp_after)
            if fails and keep is not None:
                with contextlib.suppress(OSError):
                    shutil.copytree(r, keep / f"draw-{d.index}", symlinks=True)
            _rmtree(r)
            for p in (job.out_path, job.err_path):
                with contextlib.suppress(OSError):
                    os.unlink(p)
            records.append(
                {
                    "index": d.index,
                    "command": d.command,
                    "argv": d.argv,
                    "env": d.env,
                    "shell": d.shell(),
                    "rc": outcome.rc,
                    "seconds": round(outcome.seconds, 2),
                    "timed_out": outcome.timed_out,
                    "failures": [dataclasses.asdict(f) for f in fails],
                    "stderr_tail": _tail(outcome.stderr, 12),
                }
            )
            if len(records) % progress_every == 0:
                bad = sum(1 for x in records if x["failures"])
                self.log(f"fuzz: {len(records)}/{len(draws)} draws, {bad} failing, {time.monotonic() - t0:.0f} s")

        jobs = []
        for d in draws:
            r = str(self.draws_dir / f"d{d.index}")
            job = Job(d.argv, r, child_env(r, str(self.work), d.env), *self._logs(f"draw-{d.index}"))
            job.payload = d
            jobs.append(job)
        self.runner.run(jobs, before, after)
        records.sort(key=lambda x: x["index"])
        return records

    def confirm(self, records: list[dict], draws: dict[int, Draw]) -> None:
        """Run timed-out and signalled draws of the fork mode again as fresh processes: a failure there
        is real; one that goes away was an artifact of forking (noted, not counted)."""
        if self.runner.mode != "fork":
            return
        suspects = [
            r
            for r in records
            if any(f["cls"] == "timeout" or (f["cls"] == "exit-status" and r["rc"] < 0) for f in r["failures"])
        ]
        if not suspects:
            return
        fork_runner = self.runner
        self.runner = Runner("subprocess", fork_runner.jobs, fork_runner.limits)
        try:
            again = {r["index"]: r for r in self.run_draws([draws[s["index"]] for s in suspects], 10**9)}
        finally:
            self.runner = fork_runner
        for r in suspects:
            second = again[r["index"]]
            if second["failures"]:
                r["confirmed"] = "in a fresh process too"
                continue
            self.notes.append(f"draw {r['index']} failed only when forked ({r['failures'][0]['cls']}); not counted")
            r["fork_only_failures"] = r["failures"]
            r["failures"] = []


# ------------------------------------------------------------------ reports


def replay_hint(seed: int, index: int) -> str:
    return (
        f"FARZI_FUZZ_SEED={seed} FARZI_FUZZ_ONLY={index} .venv/bin/pytest -m slow tests/cli/test_cli_fuzz.py"
        f"  (or: .venv/bin/python tests/cli/fuzz_harness.py --seed {seed} --only {index})"
    )


def _display(shell: str) -> str:
    """A command line for reading: runs of one character over 40 long shown by their length."""
    return re.sub(r"(.)\1{40,}", lambda m: f"{m.group(1) * 8}<{len(m.group(0))} x {m.group(1)!r}>", shell)


def summarize(report: dict, examples: int = 3) -> str:
    """The failures grouped by class, then by signature; each example with its replay."""
    recs = report["records"]
    failing = [r for r in recs if r["failures"]]
    writing = sum(1 for r in recs if r["command"] in WRITING)
    rcs = collections.Counter(r["rc"] for r in recs)
    lines = [
        f"CLI fuzz: seed {report['seed']}, {len(recs)} draws ({writing} writing) in {report['seconds']:.0f} s "
        f"({report['mode']}, {report['jobs']} at a time): {len(failing)} failing; exit statuses {dict(rcs)}"
    ]
    groups: dict[str, dict[str, list[tuple[dict, dict]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for r in failing:
        for f in r["failures"]:
            groups[f["cls"]][f["signature"]].append((r, f))
    order = ["harness", "timeout", "traceback", "exit-status", "error-line", "touched", "leftover-temp"]
    order += ["leftover-process"]
    for cls in sorted(groups, key=lambda c: order.index(c) if c in order else 99):
        sigs = groups[cls]
        n = len({r["index"] for v in sigs.values() for r, _ in v})
        lines.append(f"\n== {cls}: {n} draws, {len(sigs)} signatures")
        for sig, items in sorted(sigs.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  -- {sig}  ({len(items)} draws)")
            for r, f in sorted(items, key=lambda x: len(x[0]["shell"]))[:examples]:
                lines.append(f"     draw {r['index']} (seed {report['seed']}, rc {r['rc']}): {_display(r['shell'])}")
                lines.append(f"       replay: {replay_hint(report['seed'], r['index'])}")
                for d in f["detail"].splitlines()[-8:]:
                    lines.append(f"       | {d}")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def run(
    work: Path,
    seed: int = 0,
    draws: int = 1000,
    read_only: int | None = None,
    only: list[int] | None = None,
    mode: str = "fork",
    jobs: int = 2,
    limits: Limits | None = None,
    argvs: list[list[str]] | None = None,
    bare: bool = False,
    keep: Path | None = None,
    log: Any = None,
) -> dict:
    """A whole session; returns the report (``records``: one per draw)."""
    for k, v in QUIET_ENV.items():
        os.environ[k] = v  # before torch, polars and rich load (below, in introspect)
    server_tmp = Path(work) / "server-tmp"  # what this process's own imports leave stays in the scratch
    server_tmp.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(server_tmp)
    import tempfile

    tempfile.tempdir = None
    t0 = time.monotonic()
    params = introspect()
    session = Session(work, mode, jobs, limits, log)
    session.build(bare=bare)
    drawer = Drawer(params, seed)
    if argvs is not None:
        chosen = [Draw(i, seed, a[0], list(a), _values(params, a)) for i, a in enumerate(argvs)]
    else:
        n_ro = draws // 10 if read_only is None else read_only
        indices = only if only else [*range(draws), *range(READ_ONLY_BASE, READ_ONLY_BASE + n_ro)]
        chosen = [drawer.draw(i) for i in indices]
    threads = _threads() if mode == "fork" else []
    records = session.run_draws(chosen, keep=keep)
    session.confirm(records, {d.index: d for d in chosen})
    return {
        "seed": seed,
        "mode": mode,
        "jobs": jobs,
        "limits": dataclasses.asdict(session.runner.limits),
        "seconds": time.monotonic() - t0,
        "parent_threads_at_fork": threads,
        "notes": session.notes,
        "records": records,
    }


def _values(params: dict[str, list[Param]], argv: list[str]) -> dict[str, str]:
    """The parameter values of an explicit command line (for its declared outputs)."""
    values: dict[str, str] = {}
    ps = params.get(argv[0], []) if argv else []
    by_flag = {f: p for p in ps for f in (*p.flags, *p.off)}
    args = [p for p in ps if p.argument]
    rest = iter(argv[1:])
    for a in rest:
        flag, eq, val = a.partition("=")
        p = by_flag.get(flag)
        if p is not None and p.kind == "flag":
            values[p.name] = "off" if flag in p.off else "on"
        elif p is not None:
            values[p.name] = val if eq else next(rest, "")
        elif args and not a.startswith("-"):
            values[args.pop(0).name] = a
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=int(os.environ.get("FARZI_FUZZ_SEED", "0")))
    ap.add_argument("--draws", type=int, default=int(os.environ.get("FARZI_FUZZ_DRAWS", "1000")))
    ap.add_argument("--read-only", type=int, default=None, help="eval/inspect draws (default: a tenth of --draws)")
    ap.add_argument("--only", default=os.environ.get("FARZI_FUZZ_ONLY", ""), help="comma-separated draw numbers")
    ap.add_argument("--mode", choices=("fork", "subprocess"), default=os.environ.get("FARZI_FUZZ_MODE", "fork"))
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("FARZI_FUZZ_JOBS", "2")))
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("FARZI_FUZZ_TIMEOUT", DEFAULT_TIMEOUT)))
    ap.add_argument("--memory-mb", type=int, default=int(os.environ.get("FARZI_FUZZ_MEMORY_MB", DEFAULT_MEMORY_MB)))
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new one in /tmp)")
    ap.add_argument("--keep", type=Path, default=None, help="copy each failing draw's tree here")
    ap.add_argument("--argv-json", default=None, help="explicit command lines (a JSON list of lists) instead")
    ap.add_argument("--bare", action="store_true", help="no fixtures (for command lines that need no data)")
    ap.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    ap.add_argument("--print", dest="print_", action="store_true", help="print the command lines and exit")
    args = ap.parse_args(argv)
    only = [int(x) for x in args.only.split(",") if x.strip()] or None
    if args.print_:
        drawer = Drawer(introspect(), args.seed)
        n_ro = args.draws // 10 if args.read_only is None else args.read_only
        for i in only or [*range(args.draws), *range(READ_ONLY_BASE, READ_ONLY_BASE + n_ro)]:
            print(i, drawer.draw(i).shell())
        return 0
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="farzi-cli-fuzz-"))
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    report = run(
        work,
        seed=args.seed,
        draws=args.draws,
        read_only=args.read_only,
        only=only,
        mode=args.mode,
        jobs=args.jobs,
        limits=Limits(args.timeout, args.memory_mb),
        argvs=json.loads(args.argv_json) if args.argv_json else None,
        bare=args.bare,
        keep=args.keep,
    )
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=1))
    print(summarize(report), flush=True)
    if args.work is None:
        _rmtree(str(work))
    return 1 if any(r["failures"] for r in report["records"]) else 0


if __name__ == "__main__":
    sys.exit(main())
