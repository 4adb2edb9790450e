"""ppox.io: the finiteness check the weight guard, checkpoints and predict rely on."""

from __future__ import annotations

import pytest
import torch

from ppox.io import all_finite


def _weights() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(64, 4), torch.randn(64), torch.randn(2, 64), torch.zeros(0), torch.arange(5)]


def test_all_finite_is_true_for_finite_tensors_and_ignores_integer_ones():
    assert all_finite(_weights())
    assert all_finite([])
    assert all_finite([torch.arange(3)])  # no floating-point element to check


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_all_finite_finds_one_non_finite_element_in_any_tensor(bad, where):
    tensors = _weights()
    tensors[where].view(-1)[-1] = bad
    assert not all_finite(tensors)


def test_finite_values_whose_sum_overflows_are_still_finite():
    # the L1 sum of these overflows float32 to inf; the element-wise confirmation finds them finite
    big = torch.full((4,), 3e38)
    assert not torch.isfinite(big.abs().sum())
    assert all_finite([big, torch.ones(3)])
    assert not all_finite([big, torch.tensor([float("nan")])])


def test_all_finite_checks_each_dtype_on_its_own():
    tensors = [torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float16), torch.ones(3)]
    assert all_finite(tensors)
    tensors[1][0] = float("inf")
    assert not all_finite(tensors)
