"""The rollout's storage and what a rollout backend is: the preallocated buffer (`Rollout`), a recurrent policy's
carried state (`Carry`), the finished episodes (`Finished`) and the `Collector` protocol that ppox.rl.rollout's and
ppox.rl.compiled_rollout's collectors implement (ppox.rl.rollout.make_collector picks one per run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ppox.rl.policy import Policy
from ppox.rl.spaces import ActionSpec

Finished = list[tuple[float, int]]  # (return, length) of every episode that ended


@dataclass
class Rollout:
    """Preallocated rollout storage, time first: every tensor is (num_steps, num_envs, ...).

    `action_masks` (num_steps, num_envs, head_size) bool: the env's valid actions, where it gives masks.
    `episode_starts` (num_steps, num_envs) bool and `states` (num_steps, num_envs, state_size): a recurrent
    policy's input at each step (obs[t] starts an episode; the state before step t), so the update replays
    every sequence from the state it started with. None where they do not apply.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    values: torch.Tensor
    terminated: torch.Tensor
    episode_end: torch.Tensor
    final_values: torch.Tensor  # V(final obs) at truncations, 0 elsewhere
    action_masks: torch.Tensor | None = None
    episode_starts: torch.Tensor | None = None
    states: torch.Tensor | None = None

    @classmethod
    def allocate(cls, num_steps: int, num_envs: int, obs_dim: int | tuple[int, ...], spec: ActionSpec, device,
                 mask: bool = False, state_size: int = 0, obs_dtype: torch.dtype = torch.float32) -> Rollout:
        """`obs_dim`: the length of a flat observation, or the shape of one (images: (C, H, W), stored
        as `obs_dtype` uint8: ppox.rl.spaces.obs_storage)."""
        obs_shape = (obs_dim,) if isinstance(obs_dim, int) else tuple(obs_dim)
        action_dtype = torch.float32 if spec.kind == "continuous" else torch.long

        def zeros(*shape, dtype=torch.float32):
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(
            obs=zeros(num_steps, num_envs, *obs_shape, dtype=obs_dtype),
            actions=zeros(num_steps, num_envs, *spec.action_shape, dtype=action_dtype),
            logprobs=zeros(num_steps, num_envs),
            rewards=zeros(num_steps, num_envs),
            values=zeros(num_steps, num_envs),
            terminated=zeros(num_steps, num_envs, dtype=torch.bool),
            episode_end=zeros(num_steps, num_envs, dtype=torch.bool),
            final_values=zeros(num_steps, num_envs),
            action_masks=zeros(num_steps, num_envs, spec.head_size, dtype=torch.bool) if mask else None,
            episode_starts=zeros(num_steps, num_envs, dtype=torch.bool) if state_size else None,
            states=zeros(num_steps, num_envs, state_size) if state_size else None,
        )


@dataclass
class Carry:
    """What a recurrent rollout carries from one rollout to the next (and a checkpoint saves): the policy's
    state (num_envs, state_size) and whether each env's current observation starts an episode (num_envs,)."""

    state: torch.Tensor
    episode_starts: torch.Tensor

    @classmethod
    def fresh(cls, policy: Policy, num_envs: int) -> Carry:
        """Every env at an episode's start (zero state)."""
        state = policy.initial_state(num_envs)
        return cls(state, torch.ones(num_envs, dtype=torch.bool, device=state.device))


class Collector(Protocol):
    def collect(self, buf: Rollout, obs: torch.Tensor, finished: Finished) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill `buf` starting from `obs` (the current normalised observations, (num_envs, obs_dim)) and
        append finished episodes to `finished`; return (next observations, V(s_T) for bootstrapping)."""
        ...


__all__ = ["Carry", "Collector", "Finished", "Rollout"]
