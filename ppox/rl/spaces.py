"""Observation encoding and action distributions for gymnasium spaces.

Observations: Box (flattened), Discrete (one-hot), Dict/Tuple of those (flattened, concatenated
in the space's key order). Actions: Discrete (categorical), Box (diagonal Gaussian),
MultiDiscrete (independent categoricals). Anything else is refused with a clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces

from ppox.errors import EnvError

SUPPORTED_OBS = "Box, Discrete, and Dict/Tuple of those"
SUPPORTED_ACTIONS = "Discrete, Box and MultiDiscrete"
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def check_observation_space(space: spaces.Space) -> None:
    if isinstance(space, (spaces.Box, spaces.Discrete)):
        return
    if isinstance(space, spaces.Dict):
        for sub in space.spaces.values():
            check_observation_space(sub)
        return
    if isinstance(space, spaces.Tuple):
        for sub in space.spaces:
            check_observation_space(sub)
        return
    raise EnvError(f"observation space {space} is not supported; ppox supports {SUPPORTED_OBS}")


def obs_dim(space: spaces.Space) -> int:
    """Length of the flat float vector an observation is encoded to."""
    check_observation_space(space)
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.Dict):
        return sum(obs_dim(s) for s in space.spaces.values())
    return sum(obs_dim(s) for s in space.spaces)


def encode_obs(obs, space: spaces.Space, device: torch.device | str = "cpu") -> torch.Tensor:
    """Batched raw observations (leading dim = num_envs) -> float32 tensor (num_envs, obs_dim)."""
    if isinstance(space, spaces.Box):
        t = obs if isinstance(obs, torch.Tensor) else torch.from_numpy(np.asarray(obs))
        return t.reshape(t.shape[0], -1).to(device=device, dtype=torch.float32)
    if isinstance(space, spaces.Discrete):
        t = obs if isinstance(obs, torch.Tensor) else torch.from_numpy(np.asarray(obs))
        idx = (t.to(device=device, dtype=torch.long) - int(space.start)).reshape(-1)
        return torch.nn.functional.one_hot(idx, int(space.n)).to(torch.float32)
    if isinstance(space, spaces.Dict):
        return torch.cat([encode_obs(obs[k], s, device) for k, s in space.spaces.items()], dim=-1)
    if isinstance(space, spaces.Tuple):
        return torch.cat([encode_obs(o, s, device) for o, s in zip(obs, space.spaces, strict=True)], dim=-1)
    raise EnvError(f"observation space {space} is not supported; ppox supports {SUPPORTED_OBS}")


@dataclass(frozen=True)
class ActionSpec:
    """What the policy head outputs for an action space."""

    kind: str  # "discrete" | "continuous" | "multidiscrete"
    nvec: tuple[int, ...] = ()  # categories per component (discrete: one entry)
    start: tuple[int, ...] = ()
    dim: int = 0  # continuous action dimension
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def head_size(self) -> int:
        return self.dim if self.kind == "continuous" else sum(self.nvec)

    @property
    def action_shape(self) -> tuple[int, ...]:
        if self.kind == "discrete":
            return ()
        return (self.dim,) if self.kind == "continuous" else (len(self.nvec),)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ActionSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def action_spec(space: spaces.Space) -> ActionSpec:
    if isinstance(space, spaces.Discrete):
        return ActionSpec("discrete", nvec=(int(space.n),), start=(int(space.start),))
    if isinstance(space, spaces.Box):
        if len(space.shape) != 1:
            raise EnvError(f"Box action space with shape {space.shape} is not supported; use a flat (n,) Box")
        return ActionSpec(
            "continuous",
            dim=int(space.shape[0]),
            low=tuple(float(x) for x in space.low),
            high=tuple(float(x) for x in space.high),
        )
    if isinstance(space, spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise EnvError(f"MultiDiscrete action space with shape {space.nvec.shape} is not supported")
        return ActionSpec(
            "multidiscrete",
            nvec=tuple(int(n) for n in space.nvec),
            start=tuple(int(s) for s in space.start),
        )
    raise EnvError(f"action space {space} is not supported; ppox supports {SUPPORTED_ACTIONS}")


# ---------------------------------------------------------------------------- distributions
# Written out by hand: torch.distributions validates and allocates on every call, which costs
# more than the tiny MLP forward pass at rollout batch sizes.


def _split_logits(logits: torch.Tensor, spec: ActionSpec) -> list[torch.Tensor]:
    return list(torch.split(logits, list(spec.nvec), dim=-1)) if spec.kind == "multidiscrete" else [logits]


def sample(head: torch.Tensor, log_std: torch.Tensor | None, spec: ActionSpec, deterministic: bool) -> torch.Tensor:
    """Draw actions (num_envs, *action_shape): Gaussian actions are returned unclipped."""
    if spec.kind == "continuous":
        if deterministic:
            return head
        return head + log_std.exp() * torch.randn_like(head)
    parts = []
    for logits in _split_logits(head, spec):
        if deterministic:
            parts.append(logits.argmax(dim=-1))
        else:
            # Gumbel-max: argmax(logits + Gumbel noise) is a sample from softmax(logits)
            u = torch.rand_like(logits).clamp_(1e-20, 1.0)
            parts.append((logits - torch.log(-torch.log(u))).argmax(dim=-1))
    return parts[0] if spec.kind == "discrete" else torch.stack(parts, dim=-1)


def log_prob_entropy(
    head: torch.Tensor, log_std: torch.Tensor | None, actions: torch.Tensor, spec: ActionSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample log pi(a|s) and entropy H[pi(.|s)], both (batch,)."""
    if spec.kind == "continuous":
        std = log_std.exp()
        logp = (-0.5 * ((actions - head) / std) ** 2 - log_std - LOG_SQRT_2PI).sum(-1)
        entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(-1).expand(head.shape[0])
        return logp, entropy
    if spec.kind == "discrete":
        actions = actions.unsqueeze(-1)
    logp = torch.zeros(head.shape[0], device=head.device)
    entropy = torch.zeros(head.shape[0], device=head.device)
    for i, logits in enumerate(_split_logits(head, spec)):
        log_probs = torch.log_softmax(logits, dim=-1)
        logp = logp + log_probs.gather(-1, actions[..., i : i + 1].long()).squeeze(-1)
        entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


def to_env_action(actions: torch.Tensor, spec: ActionSpec) -> np.ndarray:
    """Policy actions -> what the env expects: Gaussian actions clipped to the bounds, offsets added."""
    if spec.kind == "continuous":
        low = torch.tensor(spec.low, device=actions.device)
        high = torch.tensor(spec.high, device=actions.device)
        return torch.clamp(actions, low, high).cpu().numpy()
    a = actions.cpu().numpy()
    if any(spec.start):
        a = a + np.asarray(spec.start if spec.kind == "multidiscrete" else spec.start[0])
    return a
