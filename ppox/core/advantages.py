"""Generalised Advantage Estimation (Schulman et al. 2016) as one reverse scan."""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    episode_end: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over a rollout; all inputs are (num_steps, ...) with time first.

    rewards[t]      reward received after the action at step t
    values[t]       V(s_t)
    next_values[t]  V(s_{t+1}) of the *true* next state: on truncation the value of the final
                    observation (not of the reset observation that replaced it)
    terminated[t]   s_{t+1} is terminal: no bootstrap, V(s_{t+1}) := 0
    episode_end[t]  the episode ended at t (terminated or truncated): the advantage recursion
                    must not cross into the next episode

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - episode_end_t) * A_{t+1}
    Returns (advantages, returns = advantages + values).
    """
    not_terminal = 1.0 - terminated.to(values.dtype)
    continues = 1.0 - episode_end.to(values.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values
    advantages = torch.empty_like(values)
    last = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * gae_lambda * continues[t] * last
        advantages[t] = last
    return advantages, advantages + values


def normalize(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-variance (sample std) over all elements, or over the masked ones."""
    if mask is None:
        return (x - x.mean()) / (x.std() + eps)
    m = mask.to(x.dtype)
    n = m.sum().clamp_min(1.0)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / (n - 1).clamp_min(1.0)
    return (x - mean) / (var.sqrt() + eps) * m
