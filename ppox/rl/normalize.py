"""Running statistics for observation normalisation and reward scaling (details c4-c7)."""

from __future__ import annotations

import numpy as np
import torch


class RunningMeanStd:
    """Mean and variance of a stream of batches (parallel algorithm of Chan et al.), in float64."""

    def __init__(self, shape: tuple[int, ...] = (), device: torch.device | str = "cpu", epsilon: float = 1e-4):
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = torch.tensor(epsilon, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        batch_mean = x.mean(dim=0)
        batch_var = x.var(dim=0, unbiased=False)
        batch_count = x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def update_np(self, x: np.ndarray) -> None:
        """`update` for a numpy batch (CPU statistics only; the CPU rollout of ppox.rl.ppo)."""
        x = np.asarray(x, dtype=np.float64)
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        batch_var = (centred * centred).mean(axis=0)
        batch_count = x.shape[0]
        mean, var, count = self.mean.numpy(), self.var.numpy(), float(self.count)
        delta = batch_mean - mean
        total = count + batch_count
        m2 = var * count + batch_var * batch_count + delta**2 * count * batch_count / total
        self.mean = torch.from_numpy(np.asarray(mean + delta * batch_count / total, dtype=np.float64))
        self.var = torch.from_numpy(np.asarray(m2 / total, dtype=np.float64))
        self.count = torch.tensor(total, dtype=torch.float64)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of mean, var and count (float64)."""
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.mean.device
        self.mean = state["mean"].to(device, torch.float64).clone()
        self.var = state["var"].to(device, torch.float64).clone()
        self.count = state["count"].to(device, torch.float64).clone()


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
        normed = (obs - self.rms.mean.numpy()) / np.sqrt(self.rms.var.numpy() + self.eps)
        return np.clip(normed, -self.clip, self.clip).astype(np.float32)


class RewardScaler:
    """Divide rewards by the running std of the discounted return (not of the reward itself)."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, device: torch.device | str = "cpu",
                 eps: float = 1e-8):
        self.rms = RunningMeanStd((), device)
        self.returns = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.gamma = gamma
        self.clip = clip
        self.eps = eps

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
        returns = self.returns.numpy() * self.gamma + reward.astype(np.float64)
        self.rms.update_np(returns)
        self.returns = torch.from_numpy(np.where(episode_end, 0.0, returns))
        scaled = reward / np.sqrt(self.rms.var.numpy() + self.eps)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)
