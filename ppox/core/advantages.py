"""Generalised Advantage Estimation (Schulman et al. 2016) as one reverse scan."""

from __future__ import annotations

from collections.abc import Callable

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
    decay = gamma * gae_lambda * (1.0 - episode_end.to(values.dtype))
    deltas = rewards + gamma * not_terminal * next_values - values
    advantages = torch.empty_like(values)
    if deltas.device.type == "cpu" and not deltas.requires_grad:
        # the loop is sequential: on CPU run it on numpy views of the tensors, where an op on a
        # small row costs a fraction of a torch op's dispatch
        _reverse_scan(deltas.numpy(), decay.numpy(), advantages.numpy())
    else:
        _reverse_scan(deltas, decay, advantages)
    return advantages, advantages + values


def _reverse_scan(deltas, decay, out) -> None:
    """out[t] = deltas[t] + decay[t] * out[t + 1], from the last step back (out[T] = 0); tensors or arrays."""
    last = 0.0
    for t in range(deltas.shape[0] - 1, -1, -1):
        last = deltas[t] + decay[t] * last
        out[t] = last


def normalize(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Zero-mean, unit-variance (sample std) over all elements, or over the masked ones.

    With `all_reduce_sum` (a sum over processes) the statistics are those of the global batch,
    so N processes normalise exactly as one process holding all their data would.
    """
    if mask is None and all_reduce_sum is None:
        return (x - x.mean()) / (x.std() + eps)
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    moments = torch.stack([m.sum(), (x * m).sum(), (x * x * m).sum()])
    if all_reduce_sum is not None:
        moments = all_reduce_sum(moments)
    n, total, total_sq = moments[0].clamp_min(1.0), moments[1], moments[2]
    mean = total / n
    var = ((total_sq - n * mean * mean) / (n - 1).clamp_min(1.0)).clamp_min(0.0)
    out = (x - mean) / (var.sqrt() + eps)
    return out if mask is None else out * m
