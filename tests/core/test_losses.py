"""The clipped objective against the design documents' worked examples (epsilon = 0.2)."""

import pytest
import torch

from ppox.core.losses import aggregate, clipped_surrogate, explained_variance, value_loss


def objective_and_grad(r: float, a: float, **kw) -> tuple[float, float]:
    ratio = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    obj = clipped_surrogate(ratio, torch.tensor(a, dtype=torch.float64), 0.2, **kw)
    obj.backward()
    return float(obj), float(ratio.grad)


@pytest.mark.parametrize(
    ("r", "a", "expected"),
    [(100.0, 5.0, 6.0), (100.0, -5.0, -500.0), (0.1, 100.0, 10.0), (0.1, -100.0, -80.0)],
)
def test_worked_examples(r, a, expected):
    assert objective_and_grad(r, a)[0] == pytest.approx(expected)


# Tables of 001_cf813a7918d908e8.txt: where min() picks the clipped term, the gradient is zero.
@pytest.mark.parametrize(
    ("r", "a", "zero_grad"),
    [
        (0.9, 1.0, False), (1.1, 1.0, False), (1.3, 1.0, True),  # positive advantage
        (1.1, -1.0, False), (0.9, -1.0, False), (0.7, -1.0, True),  # negative advantage
        (0.7, 1.0, False), (1.3, -1.0, False),  # the unclipped side keeps pushing back
    ],
)
def test_zero_gradient_exactly_where_clipped(r, a, zero_grad):
    _, grad = objective_and_grad(r, a)
    assert (grad == 0.0) == zero_grad
    if not zero_grad:
        assert grad == pytest.approx(a)


def test_clip_higher_widens_only_the_upper_bound():
    # eps_low = 0.2, eps_high = 0.28 (DAPO)
    obj, grad = objective_and_grad(1.25, 1.0, clip_coef_high=0.28)
    assert obj == pytest.approx(1.25) and grad == pytest.approx(1.0)
    obj, grad = objective_and_grad(1.5, 2.0, clip_coef_high=0.28)
    assert obj == pytest.approx(1.28 * 2.0) and grad == 0.0
    obj, grad = objective_and_grad(0.5, -1.0, clip_coef_high=0.28)  # lower bound unchanged
    assert obj == pytest.approx(-0.8) and grad == 0.0
    assert objective_and_grad(100.0, 5.0, clip_coef_high=0.28)[0] == pytest.approx(6.4)


def test_dual_clip_bounds_negative_advantages():
    obj, grad = objective_and_grad(100.0, -5.0, dual_clip=3.0)
    assert obj == pytest.approx(-15.0) and grad == 0.0
    obj, grad = objective_and_grad(2.0, -1.0, dual_clip=3.0)  # -2 > -3: untouched
    assert obj == pytest.approx(-2.0) and grad == pytest.approx(-1.0)
    # positive advantages are not affected
    assert objective_and_grad(100.0, 5.0, dual_clip=3.0)[0] == pytest.approx(6.0)
    assert objective_and_grad(0.1, -100.0, dual_clip=3.0)[0] == pytest.approx(-80.0)


def test_value_loss_clipping_takes_the_pessimistic_branch():
    v = torch.tensor([2.0, 0.5])
    ret = torch.tensor([0.0, 0.0])
    old = torch.tensor([1.0, 1.0])
    # unclipped: 0.5*4=2, 0.5*0.25=0.125; clipped values 1.2, 0.8 -> 0.5*1.44=0.72, 0.5*0.64=0.32
    assert torch.allclose(value_loss(v, ret), torch.tensor([2.0, 0.125]))
    assert torch.allclose(value_loss(v, ret, old, 0.2), torch.tensor([2.0, 0.32]))


def test_aggregation_modes_on_a_ragged_batch():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert float(aggregate(x, m, "token-mean")) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert float(aggregate(x, m, "seq-mean-token-mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(aggregate(x, m, "seq-mean-token-sum")) == pytest.approx((6.0 + 4.0) / 2)
    assert float(aggregate(x)) == pytest.approx(10 / 6)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(x, m, "bogus")


def test_explained_variance():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(4), y) == pytest.approx(0.0)
