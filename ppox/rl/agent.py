"""Actor-critic networks with the initialisation of the 37 implementation details."""

from __future__ import annotations

import math

import torch
from torch import nn

from ppox.rl.spaces import ActionSpec, log_prob_entropy, sample


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (detail 2)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], activation: str) -> nn.Sequential:
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [layer_init(nn.Linear(in_dim, width)), act()]
        in_dim = width
    return nn.Sequential(*layers)


class Agent(nn.Module):
    """Separate actor and critic MLPs (default) or one shared trunk with two heads.

    Heads: policy gain 0.01 (near-uniform initial policy), value gain 1. Continuous actions use a
    state-independent log-std parameter (detail c1).
    """

    def __init__(
        self,
        obs_dim: int,
        spec: ActionSpec,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: str = "tanh",
        shared_trunk: bool = False,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.shared_trunk = shared_trunk
        self.actor_body = mlp(obs_dim, hidden_sizes, activation)
        self.critic_body = None if shared_trunk else mlp(obs_dim, hidden_sizes, activation)
        self.actor_head = layer_init(nn.Linear(hidden_sizes[-1], spec.head_size), gain=0.01)
        self.critic_head = layer_init(nn.Linear(hidden_sizes[-1], 1), gain=1.0)
        if spec.kind == "continuous":
            self.log_std = nn.Parameter(torch.full((spec.dim,), float(init_log_std)))
        else:
            self.register_parameter("log_std", None)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s): (batch, obs_dim) -> (batch,)."""
        body = self.actor_body if self.critic_body is None else self.critic_body
        return self.critic_head(body(obs)).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy head output, value); the head is logits or the Gaussian mean."""
        hidden = self.actor_body(obs)
        head = self.actor_head(hidden)
        if self.critic_body is None:
            return head, self.critic_head(hidden).squeeze(-1)
        return head, self.critic_head(self.critic_body(obs)).squeeze(-1)

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rollout step: (actions, log pi(a|s), V(s)) for a batch of observations."""
        head, value = self(obs)
        actions = sample(head, self.log_std, self.spec, deterministic)
        logprob, _ = log_prob_entropy(head, self.log_std, actions, self.spec)
        return actions, logprob, value

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update step: (log pi(a|s), entropy, V(s)) with gradients."""
        head, value = self(obs)
        logprob, entropy = log_prob_entropy(head, self.log_std, actions, self.spec)
        return logprob, entropy, value

    @torch.no_grad()
    def policy_action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        head = self.actor_head(self.actor_body(obs))
        return sample(head, self.log_std, self.spec, deterministic)
