"""farzi.limits: the memory this process may take and the estimates every size option is bounded by
(issue 26, item 4). The CLI side is tests/test_plan_bounds.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from farzi import limits
from farzi.distill.config import DistillConfig
from farzi.errors import ConfigError
from farzi.limits import F32, F64, GIB, ID, MIB, Need
from farzi.models import build_model, count_parameters, make_config

TINY = {"d_model": 8, "n_layers": 1, "max_len": 16}


# ------------------------------------------------------------------ the machine
def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake /proc and /sys/fs/cgroup: MemAvailable 1000 MiB, no rlimits, no cgroup file yet."""
    _tree(tmp_path, {"meminfo": "MemTotal:  4096000 kB\nMemAvailable:  1024000 kB\n", "cgroup": ""})
    _tree(tmp_path, {"status": "Name: python\nVmSize:   102400 kB\nVmData:    51200 kB\n"})
    monkeypatch.setattr(limits, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(limits, "PROC_STATUS", tmp_path / "status")
    monkeypatch.setattr(limits, "PROC_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path / "sys")
    unlimited = (limits.resource.RLIM_INFINITY, limits.resource.RLIM_INFINITY)
    monkeypatch.setattr(limits.resource, "getrlimit", lambda which: unlimited)
    return tmp_path


def test_available_memory_is_memavailable_without_other_limits(machine: Path) -> None:
    assert limits.physical_available() == 1024000 * 1024
    assert limits.rlimit_room() is None and limits.cgroup_room() is None
    assert limits.available_memory() == 1024000 * 1024


def test_the_rlimits_bound_it_less_what_the_process_has_mapped(machine: Path, monkeypatch) -> None:
    res = limits.resource
    soft = {res.RLIMIT_AS: 300 * MIB, res.RLIMIT_DATA: 500 * MIB}
    monkeypatch.setattr(res, "getrlimit", lambda which: (soft.get(which, res.RLIM_INFINITY), res.RLIM_INFINITY))
    # RLIMIT_AS 300 MiB less VmSize 100 MiB; RLIMIT_DATA 500 MiB less VmData 50 MiB
    assert limits.rlimit_room() == 200 * MIB
    assert limits.available_memory() == 200 * MIB


def test_a_cgroup_v2_limit_bounds_it_less_the_usage_that_cannot_be_reclaimed(machine: Path) -> None:
    (machine / "cgroup").write_text("0::/job/step\n")
    sys_ = machine / "sys"
    _tree(sys_, {"cgroup.controllers": "cpu memory\n", "job/memory.max": "max\n"})
    _tree(sys_, {"job/step/memory.max": f"{400 * MIB}\n", "job/step/memory.current": f"{150 * MIB}\n"})
    _tree(sys_, {"job/step/memory.stat": f"anon 1\ninactive_file {50 * MIB}\nactive_file 7\n"})
    assert limits.cgroup_room() == 400 * MIB - (150 - 50) * MIB
    assert limits.available_memory() == 300 * MIB  # below MemAvailable's 1000 MiB
    (sys_ / "job" / "memory.max").write_text(f"{200 * MIB}\n")  # a parent's tighter limit counts too
    (sys_ / "job" / "memory.current").write_text(f"{150 * MIB}\n")
    assert limits.cgroup_room() == 50 * MIB


def test_a_cgroup_v1_limit_bounds_it_and_no_limit_is_none(machine: Path) -> None:
    # inside a container the path names the host's view; the hierarchy's root is the container's cgroup
    (machine / "cgroup").write_text("5:devices:/x\n4:memory:/docker/abc\n0::/\n")
    mem = machine / "sys" / "memory"
    _tree(mem, {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": f"{MIB}\n"})
    assert limits.cgroup_room() is None
    (mem / "memory.limit_in_bytes").write_text(f"{64 * MIB}\n")
    (mem / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {4 * MIB}\n")
    (mem / "memory.usage_in_bytes").write_text(f"{20 * MIB}\n")
    assert limits.cgroup_room() == 64 * MIB - 16 * MIB
    assert limits.available_memory() == 48 * MIB


def test_without_meminfo_the_free_pages_stand_in(machine: Path, monkeypatch) -> None:
    (machine / "meminfo").unlink()
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}

    def sysconf(name: str) -> int:
        if name not in pages:
            raise ValueError(f"unrecognized configuration name {name!r}")  # as os.sysconf says it
        return pages[name]

    monkeypatch.setattr(limits.os, "sysconf", sysconf)
    assert limits.physical_available() == 1000 * 4096
    del pages["SC_AVPHYS_PAGES"]  # no such counter: every physical page
    pages["SC_PHYS_PAGES"] = 3000
    assert limits.physical_available() == 3000 * 4096


def test_usable_cores_are_the_affinity_mask(monkeypatch) -> None:
    monkeypatch.setattr(limits.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert limits.usable_cores() == 3
    monkeypatch.delattr(limits.os, "sched_getaffinity")
    monkeypatch.setattr(limits.os, "cpu_count", lambda: 7)
    assert limits.usable_cores() == 7


def test_this_machine_has_some_memory_available() -> None:
    assert 0 < limits.available_memory() < 2**63


# ------------------------------------------------------------------ checks
def test_check_fits_says_what_needs_how_much_and_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: 2 * GIB)
    limits.check_fits("the thing", 2 * GIB, "lower --x")  # exactly what there is: fits
    with pytest.raises(ConfigError) as err:
        limits.check_fits("the thing", 3 * GIB + GIB // 10, "lower --x")
    assert str(err.value) == "the thing needs ~3.1 GiB but this machine has ~2.0 GiB available; lower --x"


def test_check_needs_names_the_largest_parts_until_the_excess_is_covered(monkeypatch) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: 10 * GIB)
    parts = [Need("a", 1 * GIB, "lower --a"), Need("b", 8 * GIB, "lower --b"), Need("c", 4 * GIB, "lower --c")]
    with pytest.raises(ConfigError) as err:
        limits.check_needs("the run", parts)
    # 13 GiB in all; without b (8) it would fit: b alone is named
    assert str(err.value) == (
        "the run needs ~13.0 GiB (b: ~8.0 GiB) but this machine has ~10.0 GiB available; lower --b"
    )
    monkeypatch.setattr(limits, "available_memory", lambda: 512 * MIB)
    with pytest.raises(ConfigError) as err:
        limits.check_needs("the run", parts)
    # nothing left out would make it fit: the parts that make up most of it (8 + 4 of 13 GiB) are named
    assert "(b: ~8.0 GiB; c: ~4.0 GiB)" in str(err.value)
    assert str(err.value).endswith("~512.0 MiB available; lower --b, and lower --c")
    limits.check_needs("the run", [Need("a", 512 * MIB, "x")])  # fits


def test_sizes_read_as_mib_gib_tib() -> None:
    assert limits.size_text(3 * MIB) == "3.0 MiB"
    assert limits.size_text(8.2 * GIB) == "8.2 GiB"
    assert limits.size_text(46.8 * 1024 * GIB) == "46.8 TiB"


# ------------------------------------------------------------------ estimates
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("sasrec", {"n_layers": 5, "d_model": 16, "n_heads": 2}),
        ("gru4rec", {"n_layers": 4, "d_model": 8, "d_hidden": 12}),
        ("fmlp", {"n_layers": 3, "d_model": 8}),
        ("transformer", {"n_layers": 3, "d_model": 16, "d_ff": 24}),
        ("rnn", {"n_layers": 3, "cell": "lstm"}),
        ("rnn", {"n_layers": 1}),
    ],
)
def test_model_parameters_are_counted_without_allocating_them(name: str, overrides: dict) -> None:
    cfg = make_config(name, 37, **overrides)
    assert limits.model_parameters(name, cfg) == count_parameters(build_model(name, cfg))


def test_a_model_of_a_trillion_parameters_is_counted_at_once() -> None:
    cfg = make_config("transformer", 1000, d_model=2**17, n_layers=1000, n_heads=1, d_ff=8, max_len=16)
    n = limits.model_parameters("transformer", cfg)
    d = 2**17
    block = 4 * d + 4 * d * d + d + (d * 8 + 8 + 8 * d + d)  # 2 norms, qkv + proj, feed-forward
    assert n == 1000 * d + 16 * d + 1000 * block + 2 * d


def test_saved_states_by_hand() -> None:
    assert limits.saved_states(10, "reverse") == 1
    assert limits.saved_states(100, "reverse") == 7  # every 16th: 16, 32, ..., 96 and the start
    assert limits.saved_states(100, "paper", segment=10) == 10
    assert limits.saved_states(100, "checkpointed") == 10 + 10  # K = sqrt(100): 10 stored, 10 recomputed
    assert limits.saved_states(100, "unroll") == 0


def test_training_needs_by_hand() -> None:
    cfg = make_config("sasrec", 20, d_model=8, n_layers=1, n_heads=2, max_len=16)
    P = 20 * 8 + 16 * 8 + (2 * 8 + 3 * 64 + 64 + 8 + 2 * 8 + 64 + 8 + 8 * 8 + 8) + 2 * 8
    assert limits.model_parameters("sasrec", cfg) == P
    tf = 4 * 8 + 1 * (10 * 8 + 2 * 32 + 0 + 3 * 2 * 16)  # sasrec has no d_ff: 4 d is counted
    assert limits.token_floats(cfg, 16) == tf
    needs = limits.training_needs("sasrec", cfg, 20, rows=5, length=16, soft_rows=3, eval_length=12)
    assert [n.nbytes for n in needs] == [
        8 * 4 * P,
        5 * 16 * (3 * 4 * tf + 8) + (1 << 20) * 4 * 4,
        256 * (12 * 4 * limits.token_floats(cfg, 12) + 3 * 4 * 20),
        3 * 4 * 3 * 16 * 20,
    ]
    assert [n.fix for n in needs] == [
        "use a smaller model (lower --d-model or --n-layers)",
        "lower --batch-size or --max-len",
        "lower --max-len or the model's size",
        "lower --batch-size",
    ]


def _distill(**kw) -> DistillConfig:
    base = dict(mu=4, xi=8, latent_dim=2, model="sasrec", model_overrides=TINY, inner_steps=3, real_batch=5)
    return DistillConfig.from_dict({**base, **kw})


def test_distill_needs_by_hand() -> None:
    cfg = _distill(objective="mm", init="random", syn_batch=2, inner_state="fresh")
    mcfg = make_config("sasrec", 20, **TINY)
    P = limits.model_parameters("sasrec", mcfg)
    tf8, tf12 = limits.token_floats(mcfg, 8), limits.token_floats(mcfg, 12)
    needs = {n.what: n.nbytes for n in limits.distill_needs(cfg, 20, 12, "sasrec", mcfg, checkpoints=6)}
    S = 4 * 8 * 2 + 2 * 20  # latent 4 x 8 x 2, decoder 2 x 20
    assert needs == {
        "the summary, latent 4 x 8 x 2 and decoder 2 x 20": 8 * F32 * S,
        "an inner step, 2 x 8 x 20 distributions": 2 * (2 * 8) * (7 * F32 * 20 + 3 * F32 * tf8),
        "1 saved inner states": 1 * 3 * F64 * P,
        # L = 12: the longest sequence, shorter than the teacher's context (16)
        # the meta-loss through the fused loss: one chunk of logits (here all 5 x 12 x 20 of them), 3 copies
        "the real batch, 5 x 12 positions x 20 tokens": 5 * (12 * ID + 2 * ID + 200)
        + 5 * 12 * 3 * F32 * tf12
        + 3 * F32 * 5 * 12 * 20,
        f"the teacher, {P} parameters, and its inner states": P * (2 * 4 + 9 * 8 + 4 * 4) + 6 * 1 * F32 * P,
    }


def test_a_sparse_summary_needs_no_inputs_over_the_vocabulary() -> None:
    mcfg = make_config("sasrec", 20, **TINY)
    tf8 = limits.token_floats(mcfg, 8)

    def needs(**kw) -> dict[str, int]:
        cfg = _distill(objective="mm", init="random", syn_batch=2, inner_state="fresh", **kw)
        return {n.what: n.nbytes for n in limits.distill_needs(cfg, 20, 12, "sasrec", mcfg)}

    step = "an inner step, 2 x 8 x 20 distributions"
    assert needs(support=3)[step] == 2 * (2 * 8) * (4 * F32 * 20 + 3 * F32 * tf8 + 3 * F32 * 3 * 2)
    assert needs(support=3)[step] < needs()[step]


def test_distill_needs_grow_with_what_the_options_ask() -> None:
    mcfg = make_config("sasrec", 20, **TINY)

    def total(**kw) -> int:
        return sum(n.nbytes for n in limits.distill_needs(_distill(**kw), 20, 16, "sasrec", mcfg))

    S = 4 * 8 * 2 + 2 * 20
    assert total(meta_batch=3) - total() == 3 * F32 * S + 3 * F64 * S
    assert total(inner_steps=33) - total(inner_steps=3) > 0  # 3 saved states instead of 1
    unrolled = limits.distill_needs(_distill(meta_grad="unroll", inner_steps=50), 20, 16, "sasrec", mcfg)
    assert any(n.what.startswith("50 unrolled inner steps") and "--meta-grad reverse" in n.fix for n in unrolled)
    assert total(real_batch=50) > total()
    assert total(objective="dc", syn_batch=2) > total(objective="mm", syn_batch=2)  # dc: the whole summary at once
    teacher = total(init="teacher") - total(init="random")
    assert teacher == 8 * F32 * 4 * 8 * 20 + 4 * 8 * F32 * limits.token_floats(mcfg, 8)
    select = [
        n for n in limits.distill_needs(_distill(select_every=5), 20, 16, "sasrec", mcfg) if "selection" in n.what
    ]
    assert select and any(n.fix == "lower --recipe-batch" for n in select)


# ------------------------------------------------------------------ where the checks run
def test_validate_refuses_what_does_not_fit_naming_the_option(tiny_rec, monkeypatch) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: 1 * GIB)
    _distill().validate(tiny_rec)  # the tests' settings fit easily
    cases = [
        ({"latent_dim": 20_000_000}, "lower --latent-dim or the --budget"),
        ({"real_batch": 10**9}, "lower --real-batch"),
        ({"meta_batch": 10**8}, "lower --meta-batch"),
        ({"meta_grad": "unroll", "inner_steps": 100_000}, "use --meta-grad reverse"),
        ({"model_overrides": {**TINY, "d_model": 4096, "n_layers": 64}}, "lower --d-model or --n-layers"),
    ]
    for settings, fix in cases:
        with pytest.raises(ConfigError) as err:
            _distill(**settings).validate(tiny_rec)
        text = str(err.value)
        assert text.startswith("the distillation needs ~") and "this machine has ~1.0 GiB available" in text
        assert fix in text and "\n" not in text


def test_validate_refuses_a_model_size_below_one_in_a_line(tiny_rec) -> None:
    with pytest.raises(ConfigError, match="--n-heads 0 must be at least 1"):
        _distill(model_overrides={**TINY, "n_heads": 0}).validate(tiny_rec)


def test_training_refuses_what_does_not_fit_before_building_the_model(tiny_rec, tmp_path, monkeypatch) -> None:
    from farzi.student import train_student
    from farzi.train import TrainConfig
    from farzi.trajectories import train_trajectories

    monkeypatch.setattr(limits, "available_memory", lambda: 1 * GIB)
    built: list[str] = []
    monkeypatch.setattr("farzi.student.build_model", lambda *a, **k: built.append("student"))
    huge = {**TINY, "d_model": 1 << 16}
    with pytest.raises(ConfigError, match=r"^training needs ~.*\(lower --d-model or --n-layers\)$"):
        train_student(tiny_rec, "sasrec", "random:10", TrainConfig(max_steps=1), tmp_path / "m", huge)
    assert built == [] and not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match=r"^a trajectory run needs ~"):
        train_trajectories(tiny_rec, "sasrec", 1, 1, TrainConfig(max_steps=1), tmp_path / "t", huge)
    assert not (tmp_path / "t").exists()


def test_the_batch_is_at_most_the_training_set(tiny_rec) -> None:
    """--batch-size above the number of sequences draws them all: it costs no more than that."""
    from farzi.train import TrainConfig, check_training_memory

    cfg = make_config("sasrec", tiny_rec.vocab_size, **TINY)
    check_training_memory("training", "sasrec", cfg, TrainConfig(batch_size=10**12), tiny_rec)
    n = len(tiny_rec.train)
    longest = min(16, int(tiny_rec.train.lengths.max()))
    batch = limits.training_needs("sasrec", cfg, tiny_rec.vocab_size, n, longest)[1]
    assert batch.what == f"a batch of {n} x {longest} positions"


def test_estimates_of_the_cpu_protocols_stay_far_below_a_laptop() -> None:
    """The presets on ML-100k (|V| 1685, longest 737) and PTB (|V| 10002, longest 83) need well under 4 GiB."""
    from farzi.presets import preset_values

    for task, vocab, longest, name in (("rec", 1685, 737, "sasrec"), ("lm", 10002, 83, "transformer")):
        values = preset_values("cpu", task, "distill")
        overrides = values["model_overrides"]
        cfg = DistillConfig.from_dict({**values, "model": name})
        mcfg = make_config(name, vocab, **overrides)
        distill = sum(n.nbytes for n in limits.distill_needs(cfg, vocab, longest, name, mcfg, checkpoints=40))
        student = preset_values("cpu", task, "train-student")
        scfg = make_config(name, vocab, **student["model_overrides"])
        rows, length = student["batch_size"], min(longest, scfg.max_len)
        train = sum(n.nbytes for n in limits.training_needs(name, scfg, vocab, rows, length))
        assert distill < 4 * GIB and train < 1 * GIB, (task, distill / GIB, train / GIB)


def test_meta_device_counting_leaves_the_default_device_alone() -> None:
    limits.model_parameters("sasrec", make_config("sasrec", 20, **{**TINY, "n_layers": 4}))
    assert torch.empty(1).device.type == "cpu" and float(torch.ones(2).sum()) == 2.0
