"""next_token_loss on hand-computed cases: id targets, soft targets, ignored positions."""

from __future__ import annotations

import math

import pytest
import torch

from farzi.models import NEG_INF, next_token_loss

LN = math.log


def _logits() -> torch.Tensor:
    """[1, 3, 4] logits whose softmax rows are hand-computable.

    row 0: exp -> [0, 1, 2, 3] / 6;  row 1: exp -> [0, 1, 1, 2] / 4;  row 2 is never scored.
    """
    return torch.tensor(
        [
            [
                [NEG_INF, 0.0, LN(2), LN(3)],
                [NEG_INF, 0.0, 0.0, LN(2)],
                [NEG_INF, 5.0, -7.0, 1.0],
            ]
        ],
        dtype=torch.float64,
    )


# -sum p log q for the soft target at position 1 against row 0
SOFT_AT_1 = [0.0, 0.5, 0.25, 0.25]
SOFT_AT_1_NLL = 0.5 * LN(6) + 0.25 * LN(3) + 0.25 * LN(2)


def test_soft_target_is_cross_entropy_and_massless_positions_are_ignored():
    targets = torch.tensor([[[0.0, 1.0, 0.0, 0.0], SOFT_AT_1, [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    logits = _logits()
    # position 2's target has no mass: the mean is over one position, not two
    assert next_token_loss(logits, targets).item() == pytest.approx(SOFT_AT_1_NLL, abs=1e-12)
    assert next_token_loss(logits, targets, "sum").item() == pytest.approx(SOFT_AT_1_NLL, abs=1e-12)
    none = next_token_loss(logits, targets, "none")
    assert none.shape == (1, 2)
    torch.testing.assert_close(none, torch.tensor([[SOFT_AT_1_NLL, 0.0]], dtype=torch.float64))


def test_soft_targets_mean_over_scored_positions():
    targets = torch.tensor([[[0.0, 0.0, 0.0, 0.0], SOFT_AT_1, [0.0, 0.0, 0.0, 1.0]]], dtype=torch.float64)
    # position 2: -log(2/4); the input position 0 (no mass) is never a target
    expected = (SOFT_AT_1_NLL + LN(2)) / 2
    assert next_token_loss(_logits(), targets).item() == pytest.approx(expected, abs=1e-12)


def test_id_targets_ignore_pad():
    logits = _logits()
    # target at 1 is token 2: -log(2/6) = log 3; target at 2 is <pad>: ignored
    ids = torch.tensor([[3, 2, 0]])
    assert next_token_loss(logits, ids).item() == pytest.approx(LN(3), abs=1e-12)
    torch.testing.assert_close(next_token_loss(logits, ids, "none"), torch.tensor([[LN(3), 0.0]], dtype=torch.float64))
    # both targets real: token 2 after row 0, token 3 after row 1 (-log(2/4))
    ids = torch.tensor([[0, 2, 3]])
    assert next_token_loss(logits, ids).item() == pytest.approx((LN(3) + LN(2)) / 2, abs=1e-12)
    assert next_token_loss(logits, ids, "sum").item() == pytest.approx(LN(3) + LN(2), abs=1e-12)


@pytest.mark.parametrize("kind", ["ids", "soft"])
def test_nothing_to_score_gives_zero_not_nan(kind):
    targets = torch.zeros(1, 3, dtype=torch.int64) if kind == "ids" else torch.zeros(1, 3, 4)
    targets[0, 0] = 1 if kind == "ids" else 0  # only the (unscored) first position is real
    logits = _logits().requires_grad_(True)
    loss = next_token_loss(logits, targets)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and (grad == 0).all()


def test_soft_targets_are_differentiable():
    """Distillation differentiates through the targets: d loss / d p = -log q / #scored."""
    targets = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], SOFT_AT_1, [0.0, 0.0, 0.0, 1.0]]], dtype=torch.float64
    ).requires_grad_(True)
    (grad,) = torch.autograd.grad(next_token_loss(_logits(), targets), targets)
    expected = torch.zeros(1, 3, 4, dtype=torch.float64)
    expected[0, 1] = -torch.log_softmax(_logits()[0, 0], dim=-1) / 2
    expected[0, 2] = -torch.log_softmax(_logits()[0, 1], dim=-1) / 2
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
    # the <pad> column: q(pad) is tiny but finite, so a zero target there contributes nothing
    assert next_token_loss(_logits(), targets.detach()).isfinite()
