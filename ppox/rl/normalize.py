"""Running statistics for observation normalisation and reward scaling (details c4-c7).

Two paths share each statistic: torch (`update`, `__call__`: any device) and numpy (`update_np`, `normalize_np`,
`scale_np`: the CPU rollout of ppox.rl.rollout, once per env step). The numpy path keeps its own arrays and makes
torch tensors of them only when someone reads `mean`, `var`, `count` or `returns`: the per-step cost is a few numpy
operations on small arrays, not tensor conversions. Both paths compute the same float64 expressions: for one env the
same statistics to the bit (with more, torch and numpy sum a batch's rows in their own orders); torch divides float32
rewards in float32 where numpy divides them in float64.
"""

from __future__ import annotations

import numpy as np
import torch


def _statistic(index: int, doc: str) -> property:
    """One of RunningMeanStd's statistics, read through `_get` and set through `_set`."""
    return property(lambda self: self._get(index), lambda self, value: self._set(index, value), doc=doc)


class RunningMeanStd:
    """Mean and variance of a stream of batches (parallel algorithm of Chan et al.), in float64.

    `mean`, `var` (shape `shape`) and `count` (scalar) are tensors; an update replaces them (never writes into a tensor
    handed out before), so a reader's reference stays as it was and a changed statistic is a new tensor (what
    `PPO.predict`'s finiteness check goes by).
    """

    def __init__(self, shape: tuple[int, ...] = (), device: torch.device | str = "cpu", epsilon: float = 1e-4):
        self._tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = (
            torch.zeros(shape, dtype=torch.float64, device=device),
            torch.ones(shape, dtype=torch.float64, device=device),
            torch.tensor(epsilon, dtype=torch.float64, device=device),
        )
        # (mean, var, count) as float64 arrays and a float, while the numpy path wrote last; tensors made on demand
        self._arrays: tuple[np.ndarray, np.ndarray, float] | None = None

    def _get(self, i: int) -> torch.Tensor:
        if self._tensors is None:
            mean, var, count = self._arrays
            self._tensors = (torch.from_numpy(mean), torch.from_numpy(var), torch.tensor(count, dtype=torch.float64))
        return self._tensors[i]

    def _set(self, i: int, value: torch.Tensor) -> None:
        tensors = [self._get(0), self._get(1), self._get(2)]
        tensors[i] = value
        self._tensors = (tensors[0], tensors[1], tensors[2])
        self._arrays = None

    mean = _statistic(0, "The running mean, `shape` float64.")
    var = _statistic(1, "The running (population) variance, `shape` float64.")
    count = _statistic(2, "How many rows the statistics hold (plus the prior's epsilon), a float64 scalar.")

    def update(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        batch_mean = x.mean(dim=0)
        batch_var = x.var(dim=0, unbiased=False)
        batch_count = x.shape[0]
        mean, var, count = self.mean, self.var, self.count
        delta = batch_mean - mean
        total = count + batch_count
        m2 = var * count + batch_var * batch_count + delta**2 * count * batch_count / total
        self._tensors = (mean + delta * batch_count / total, m2 / total, total)
        self._arrays = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(mean, var, count) as float64 numpy arrays and a float (CPU statistics only); do not write into them."""
        if self._arrays is None:
            mean, var, count = self._tensors
            self._arrays = (mean.numpy(), var.numpy(), float(count))
        return self._arrays

    def update_np(self, x: np.ndarray) -> None:
        """`update` for a numpy batch (CPU statistics only), with `update`'s float64 expressions."""
        x = np.asarray(x, dtype=np.float64)
        mean, var, count = self.arrays()
        batch_count = x.shape[0]
        total = count + batch_count
        if batch_count == 1:  # mean of one row: the row; variance: 0 (exact, as the general case computes them)
            delta = x[0] - mean  # (x * 1 is x: the general case's factors of batch_count are left out)
            m2 = var * count + delta**2 * count / total
        else:
            batch_mean = x.mean(axis=0)
            centred = x - batch_mean
            batch_var = (centred * centred).mean(axis=0)
            delta = batch_mean - mean
            m2 = var * count + batch_var * batch_count + delta**2 * count * batch_count / total
            delta = delta * batch_count
        self._arrays = (np.asarray(mean + delta / total), np.asarray(m2 / total), total)
        self._tensors = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of mean, var and count (float64)."""
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.mean.device
        self._tensors = tuple(state[k].to(device, torch.float64).clone() for k in ("mean", "var", "count"))
        self._arrays = None


def _clip(x: np.ndarray, bound: float) -> np.ndarray:
    """np.clip(x, -bound, bound) in place without its Python wrapper (NaN stays NaN, as with np.clip)."""
    return np.minimum(np.maximum(x, -bound, out=x), bound, out=x)


class ObsNormalizer:
    """(obs - mean) / sqrt(var + eps), clipped; statistics update only while training."""

    def __init__(self, dim: int, clip: float = 10.0, device: torch.device | str = "cpu", eps: float = 1e-8):
        self.rms = RunningMeanStd((dim,), device)
        self.clip = clip
        self.eps = eps

    def __call__(self, obs: torch.Tensor, update: bool) -> torch.Tensor:
        if update:
            self.rms.update(obs)
        normed = (obs - self.rms.mean) / torch.sqrt(self.rms.var + self.eps)
        return torch.clamp(normed, -self.clip, self.clip).to(torch.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running statistics (copies): mean, var, count."""
        return self.rms.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rms.load_state_dict(state)

    def normalize_np(self, obs: np.ndarray, update: bool) -> np.ndarray:
        """`__call__` for numpy observations (CPU): float32 (batch, dim)."""
        if update:
            self.rms.update_np(obs)
        mean, var, _ = self.rms.arrays()
        return _clip((obs - mean) / np.sqrt(var + self.eps), self.clip).astype(np.float32)


class RewardScaler:
    """Divide rewards by the running std of the discounted return (not of the reward itself)."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, device: torch.device | str = "cpu",
                 eps: float = 1e-8):
        self.rms = RunningMeanStd((), device)
        self.returns = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.gamma = gamma
        self.clip = clip
        self.eps = eps

    @property
    def returns(self) -> torch.Tensor:
        """Each env's running discounted return (num_envs,) float64."""
        if self._returns is None:
            self._returns = torch.from_numpy(self._returns_np)
        return self._returns

    @returns.setter
    def returns(self, value: torch.Tensor) -> None:
        self._returns, self._returns_np = value, None

    def __call__(self, reward: torch.Tensor, episode_end: torch.Tensor) -> torch.Tensor:
        self.returns = self.returns * self.gamma + reward.to(torch.float64)
        self.rms.update(self.returns)
        self.returns = torch.where(episode_end, torch.zeros_like(self.returns), self.returns)
        scaled = reward / torch.sqrt(self.rms.var + self.eps)
        return torch.clamp(scaled, -self.clip, self.clip).to(torch.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running statistics of the return (mean, var, count) and each env's running return (copies)."""
        return {**self.rms.state_dict(), "returns": self.returns.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rms.load_state_dict(state)
        self.returns = state["returns"].to(self.returns.device, torch.float64).clone()

    def scale_np(self, reward: np.ndarray, episode_end: np.ndarray) -> np.ndarray:
        """`__call__` for numpy rewards and flags (CPU): float32 (num_envs,)."""
        returns = self._returns_np if self._returns_np is not None else self._returns.numpy()
        returns = returns * self.gamma + reward.astype(np.float64)
        self.rms.update_np(returns)
        self._returns_np, self._returns = np.where(episode_end, 0.0, returns), None
        var = self.rms.arrays()[1]
        return _clip(reward / np.sqrt(var + self.eps), self.clip).astype(np.float32)
