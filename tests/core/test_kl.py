"""KL estimators on P={0.7,0.2,0.1}, Q={0.6,0.3,0.1}, and the adaptive coefficient rule."""

import math

import pytest
import torch

from ppox.core.kl import AdaptiveKLController, kl_estimate

P = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
Q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
EXACT = float((P * (P / Q).log()).sum())  # KL(P || Q)


def test_exact_value():
    assert pytest.approx(0.0267, abs=2e-4) == EXACT  # 0.02681, quoted truncated as 0.0267


def estimates(n: int = 400_000):
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(P, n, replacement=True, generator=g)  # samples from P (the "old" policy)
    log_ratio = (Q[x] / P[x]).log()  # log r = log q(x) - log p(x)
    return {k: kl_estimate(log_ratio, k) for k in ("k1", "k2", "k3")}


def test_k1_k3_unbiased_k2_lower_variance():
    est = estimates()
    n = est["k1"].numel()
    for k in ("k1", "k3"):
        stderr = float(est[k].std()) / math.sqrt(n)
        assert abs(float(est[k].mean()) - EXACT) < 4 * stderr
    assert float(est["k2"].var()) < float(est["k1"].var())
    assert float(est["k3"].min()) >= 0.0 and float(est["k2"].min()) >= 0.0
    assert float(est["k1"].min()) < 0.0  # k1 can be negative per sample


def test_estimator_formulas():
    lr = torch.tensor([math.log(2.0)])
    assert float(kl_estimate(lr, "k1")) == pytest.approx(-math.log(2.0))
    assert float(kl_estimate(lr, "k2")) == pytest.approx(0.5 * math.log(2.0) ** 2)
    assert float(kl_estimate(lr, "k3")) == pytest.approx(1.0 - math.log(2.0))
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_estimate(lr, "k4")


def test_adaptive_kl_rule():
    ctl = AdaptiveKLController(1.0, target=0.01)
    assert ctl.update(0.016) == 2.0  # > 1.5 * target: double
    assert ctl.update(0.015) == 2.0  # within band: unchanged
    assert ctl.update(0.007) == 2.0  # 0.01/1.5 = 0.00667 < 0.007: unchanged
    assert ctl.update(0.006) == 1.0  # < target / 1.5: halve
    assert ctl.update(float("nan")) == 1.0
    fixed = AdaptiveKLController(0.5, target=None)
    assert fixed.update(10.0) == 0.5
    ctl2 = AdaptiveKLController(0.0, 0.01)
    ctl2.load_state_dict(ctl.state_dict())
    assert ctl2.coef == 1.0
