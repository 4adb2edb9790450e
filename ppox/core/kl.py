"""KL estimators (Schulman, "Approximating KL Divergence", 2020) and the adaptive KL coefficient.

Samples x come from q = pi_old and r = p(x) / q(x) = pi(x) / pi_old(x); each estimator's mean
estimates KL(q || p) = KL(pi_old || pi):
  k1 = -log r                unbiased, high variance, can be negative per sample
  k2 = (log r)^2 / 2         biased, low variance, always >= 0
  k3 = (r - 1) - log r       unbiased, low variance, always >= 0
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(log_ratio: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-sample KL(pi_old || pi) estimate from log r = log pi(a|s) - log pi_old(a|s)."""
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown kl_estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


class AdaptiveKLController:
    """The adaptive penalty coefficient of the PPO paper (section 4).

    After each policy update with measured KL d: beta *= 2 if d > 1.5 * target, beta /= 2 if
    d < target / 1.5; otherwise unchanged.

    With a `horizon` it is instead the proportional controller of Ziegler et al. 2019 (as in
    TRL): e = clip(d / target - 1, -0.2, 0.2); beta *= 1 + e * n_steps / horizon.
    """

    def __init__(self, init_coef: float, target: float | None, horizon: int | None = None) -> None:
        self.coef = float(init_coef)
        self.target = target
        self.horizon = horizon

    def update(self, measured_kl: float, n_steps: int = 1) -> float:
        if self.target is not None and measured_kl == measured_kl:  # NaN never moves beta
            if self.horizon is not None:
                error = min(max(measured_kl / self.target - 1.0, -0.2), 0.2)
                self.coef *= 1.0 + error * n_steps / self.horizon
            elif measured_kl > 1.5 * self.target:
                self.coef *= 2.0
            elif measured_kl < self.target / 1.5:
                self.coef /= 2.0
        return self.coef

    def state_dict(self) -> dict:
        state = {"coef": self.coef, "target": self.target}
        if self.horizon is not None:
            state["horizon"] = self.horizon
        return state

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])
        self.target = state["target"]
        self.horizon = state.get("horizon", self.horizon)
