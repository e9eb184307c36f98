"""farzi.batching.SequenceTrainSet: length bucketing, seeded; pad_right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farzi.batching import NO_BUCKETING, Bucketing, SequenceTrainSet, batching_record, pad_right
from farzi.data.sequences import Sequences

CPU = torch.device("cpu")


def _seqs(n: int = 300, seed: int = 0) -> Sequences:
    """Sequences of very different lengths (2 .. 120), each token = the sequence number + 1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 121, size=n)
    return Sequences.from_lists([str(i) for i in range(n)], [[i + 1] * int(k) for i, k in enumerate(lengths)])


def _epoch(train: SequenceTrainSet, batch_size: int, seed: int) -> list[torch.Tensor]:
    return list(train.batches(batch_size, torch.Generator().manual_seed(seed), CPU))


def _rows(batch: torch.Tensor) -> list[int]:
    return [int(row[0]) - 1 for row in batch]  # which sequence each row is


def test_pad_right() -> None:
    out = pad_right([np.array([3, 4, 5]), np.array([6])])
    assert out.dtype == torch.int64
    assert out.tolist() == [[3, 4, 5], [6, 0, 0]]
    assert pad_right([np.array([3, 4, 5])], length=2).tolist() == [[3, 4]]
    assert pad_right([]).shape == (0, 1)


@pytest.mark.parametrize("bucketing", [Bucketing(), Bucketing(batches=2, noise=0.0), NO_BUCKETING])
def test_each_sequence_once_per_epoch_each_batch_padded_to_its_longest(bucketing: Bucketing) -> None:
    seqs = _seqs()
    train = SequenceTrainSet(seqs, max_len=50, bucketing=bucketing)
    batches = _epoch(train, 32, seed=1)
    assert sorted(i for b in batches for i in _rows(b)) == list(range(len(seqs)))
    assert sorted(len(b) for b in batches) == [12] + [32] * 9
    for b in batches:
        windows = [min(len(seqs[i]), 50) for i in _rows(b)]
        assert b.shape[1] == max(windows)
        assert (b != 0).sum(1).tolist() == windows  # right padding, each window whole


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    train = SequenceTrainSet(_seqs(), max_len=50)
    first, again, other = _epoch(train, 32, 3), _epoch(train, 32, 3), _epoch(train, 32, 4)
    assert len(first) == len(again) and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert [_rows(b) for b in first] != [_rows(b) for b in other]


def test_bucketing_groups_similar_lengths_and_cuts_padding() -> None:
    seqs = _seqs()
    windows = np.minimum(seqs.lengths, 50)
    no_noise = SequenceTrainSet(seqs, max_len=50, bucketing=Bucketing(batches=100, noise=0.0))
    # one bucket holds the whole epoch: without noise the batches are consecutive runs of the sorted lengths
    ranges = sorted((min(windows[_rows(b)]), max(windows[_rows(b)])) for b in _epoch(no_noise, 32, 5))
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(ranges, ranges[1:], strict=False))

    def padded(train: SequenceTrainSet) -> int:
        return sum(b.numel() for b in _epoch(train, 32, 5))

    real = int(windows.sum())
    plain = padded(SequenceTrainSet(seqs, max_len=50, bucketing=NO_BUCKETING))
    bucketed = padded(SequenceTrainSet(seqs, max_len=50))
    assert bucketed < 1.15 * real < plain  # noise 0.1 keeps it within ~10 % of the real tokens


def test_noise_mixes_equal_lengths_differently_each_epoch() -> None:
    same = Sequences.from_lists([str(i) for i in range(64)], [[i + 1] * 10 for i in range(64)])
    train = SequenceTrainSet(same, max_len=50)
    gen = torch.Generator().manual_seed(0)
    one, two = (sorted(sorted(_rows(b)) for b in train.batches(16, gen, CPU)) for _ in range(2))
    assert one != two


def test_without_bucketing_batches_are_the_shuffled_order_cut_in_turn() -> None:
    seqs = _seqs(n=70)
    train = SequenceTrainSet(seqs, max_len=500, crop="last", bucketing=NO_BUCKETING)
    order = torch.randperm(70, generator=torch.Generator().manual_seed(6)).tolist()
    got = [_rows(b) for b in _epoch(train, 32, 6)]
    assert got == [order[:32], order[32:64], order[64:]]


def test_crop_windows() -> None:
    seqs = Sequences.from_lists(["a"], [list(range(1, 101))])
    last = SequenceTrainSet(seqs, max_len=10, crop="last")
    assert _epoch(last, 4, 0)[0].tolist() == [list(range(91, 101))]
    rand = SequenceTrainSet(seqs, max_len=10)
    starts = {int(_epoch(rand, 4, s)[0][0, 0]) for s in range(20)}
    assert len(starts) > 5 and all(1 <= s <= 91 for s in starts)


def test_describe_and_record() -> None:
    train = SequenceTrainSet(_seqs(n=5), max_len=20)
    assert batching_record(train) == {
        "kind": "ids",
        "max_len": 20,
        "crop": "random",
        "bucketing": {"batches": 50, "noise": 0.1},
    }
    plain = SequenceTrainSet(_seqs(n=5), max_len=20, crop="last", bucketing=NO_BUCKETING)
    assert batching_record(plain)["bucketing"] is None

    class Other:
        kind = "soft"

    assert batching_record(Other()) == {"kind": "soft", "bucketing": None}


@pytest.mark.parametrize("kwargs", [{"batches": -1}, {"noise": 1.0}, {"noise": -0.1}])
def test_bad_bucketing_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="bucketing"):
        Bucketing(**kwargs)
