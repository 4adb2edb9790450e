"""The policy of the classic-RL trainer: one module that rollout, update, evaluation, predict and saving share.

    observation --encoder--> features --memory core--> features --actor_head--> distribution --> actions
                                                                --critic_head--> V(s)

* encoder: turns an (encoded, ppox.rl.spaces.encode_obs) observation into features. Chosen by
  `make_encoder` from the observation space and the config; an MLP for the flat vectors of today.
  The actor and the critic have separate encoders (`actor_body`, `critic_body`) unless
  `shared_trunk`, when the critic reads the actor's features.
* memory core: `core(features, state, episode_starts) -> (features, state)`; `NoMemory` passes the
  features through (a recurrent core slots in here).
* action head: the `actor_head` Linear layer makes the distribution's parameters; `distribution`, the
  stateless action distribution of ppox.rl.spaces (categorical with an optional action mask,
  multi-categorical, diagonal Gaussian with the state-independent `log_std`), turns them into
  actions, log-probabilities and entropies.

Initialisation follows the 37 implementation details: orthogonal weights, gain sqrt(2) in the
hidden layers, 0.01 for the policy head (near-uniform initial policy), 1 for the value head, zero
biases. The state_dict keys (actor_body.*, critic_body.*, actor_head.*, critic_head.*, log_std) are
those of every model file ppox has written.

The rollout's fast steps (ppox.rl.rollout) do not re-implement this network: they run the matrices
`fused_mlp()` reads from it, and fall back to the module itself where it returns None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from gymnasium import spaces
from torch import nn

from ppox.rl.spaces import ActionSpec, action_distribution, obs_dim

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (detail 2)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


# ---------------------------------------------------------------------------- encoders
class MLPEncoder(nn.Sequential):
    """Flat observation vectors (batch, in_dim) -> features (batch, hidden_sizes[-1]): Linear + activation
    per hidden width (an nn.Sequential, so its keys are `<name>.<index>.weight` as in every saved model)."""

    def __init__(self, in_dim: int, hidden_sizes: tuple[int, ...], activation: str) -> None:
        layers: list[nn.Module] = []
        for width in hidden_sizes:
            layers += [layer_init(nn.Linear(in_dim, width)), ACTIVATIONS[activation]()]
            in_dim = width
        super().__init__(*layers)
        self.out_features = hidden_sizes[-1]
        self.activation = activation

    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]


# name -> factory(observation_space, hidden_sizes, activation); `make_encoder` picks one per space
ENCODERS = {
    "mlp": lambda space, hidden_sizes, activation: MLPEncoder(obs_dim(space), hidden_sizes, activation),
}


def encoder_name(observation_space: spaces.Space) -> str:
    """The encoder for an observation space. Every space ppox accepts today is encoded to one flat
    vector (ppox.rl.spaces.encode_obs), so an MLP; image and Dict encoders are chosen here."""
    return "mlp"


def make_encoder(observation_space: spaces.Space, hidden_sizes: tuple[int, ...], activation: str) -> nn.Module:
    """A new observation encoder for `observation_space`; it has an `out_features` attribute."""
    return ENCODERS[encoder_name(observation_space)](observation_space, hidden_sizes, activation)


# ---------------------------------------------------------------------------- memory cores
class NoMemory(nn.Module):
    """The memory core of a policy without memory: the features pass through, the state stays None.

    A memory core maps (features (batch, n), state, episode_starts (batch,) bool) to (features (batch, m),
    new state), resetting the state of the rows whose episode starts.
    """

    def forward(
        self, features: torch.Tensor, state: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return features, state


# ---------------------------------------------------------------------------- the policy
@dataclass
class FusedMLP:
    """Actor and critic as one MLP: layer 1 stacked, deeper layers block-diagonal, the last layer's output
    columns = [action head..., value]. `layers`: [(bias (out,), weight^T (in, out))]."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    activation: str
    head_size: int


class Policy(nn.Module):
    """Actor-critic: encoder(s), memory core, action head and value head (see the module docstring)."""

    def __init__(
        self,
        observation_space: spaces.Space,
        spec: ActionSpec,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: str = "tanh",
        shared_trunk: bool = False,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.shared_trunk = shared_trunk
        self.distribution = action_distribution(spec)
        # construction order = parameter order = the initialisation's random draws: keep it
        self.actor_body = make_encoder(observation_space, hidden_sizes, activation)
        self.critic_body = None if shared_trunk else make_encoder(observation_space, hidden_sizes, activation)
        self.core = NoMemory()
        self.actor_head = layer_init(nn.Linear(self.actor_body.out_features, spec.head_size), gain=0.01)
        self.critic_head = layer_init(nn.Linear(self.actor_body.out_features, 1), gain=1.0)
        if spec.kind == "continuous":
            self.log_std = nn.Parameter(torch.full((spec.dim,), float(init_log_std)))
        else:
            self.register_parameter("log_std", None)

    def head_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action head output (batch, head_size): logits or the Gaussian mean, V(s) (batch,))."""
        features, _ = self.core(self.actor_body(obs))
        head = self.actor_head(features)
        if self.critic_body is not None:
            features = self.critic_body(obs)
        return head, self.critic_head(features).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s): (batch, obs_dim) -> (batch,)."""
        if self.critic_body is None:
            features, _ = self.core(self.actor_body(obs))
        else:
            features = self.critic_body(obs)
        return self.critic_head(features).squeeze(-1)

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The update's forward, with gradients: (log pi(a|s), entropy, V(s)), each (batch,)."""
        head, value = self.head_and_value(obs)
        logprob, entropy = self.distribution.log_prob_entropy(head, self.log_std, actions, action_mask)
        return logprob, entropy, value

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, deterministic: bool = False, action_mask: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rollout step: (actions (batch, *action_shape), log pi(a|s) (batch,), V(s) (batch,)).

        `noise`: the draw to sample with (see the distribution's `sample`); default fresh from torch's generator.
        """
        head, value = self.head_and_value(obs)
        actions = self.distribution.sample(head, self.log_std, deterministic, action_mask, noise)
        logprob, _ = self.distribution.log_prob_entropy(head, self.log_std, actions, action_mask)
        return actions, logprob, value

    @torch.no_grad()
    def policy_action(
        self, obs: torch.Tensor, deterministic: bool = True, action_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Actions only (predict, evaluation): the critic is not run."""
        features, _ = self.core(self.actor_body(obs))
        return self.distribution.sample(self.actor_head(features), self.log_std, deterministic, action_mask)

    @property
    def fusable(self) -> bool:
        """Whether `fused_mlp()` can express this network: separate MLP encoders, no memory."""
        return (isinstance(self.actor_body, MLPEncoder) and isinstance(self.critic_body, MLPEncoder)
                and isinstance(self.core, NoMemory))

    @torch.no_grad()
    def fused_mlp(self) -> FusedMLP | None:
        """This network's actor and critic as one MLP of stacked / block-diagonal matrices (copies of the
        current weights), for the rollout's fast steps; None where it is not that architecture."""
        if not self.fusable:
            return None
        actor = [*self.actor_body.linears(), self.actor_head]
        critic = [*self.critic_body.linears(), self.critic_head]
        layers = []
        for i, (a, c) in enumerate(zip(actor, critic, strict=True)):
            w = torch.cat([a.weight, c.weight]) if i == 0 else torch.block_diag(a.weight, c.weight)
            layers.append((torch.cat([a.bias, c.bias]), w.T.contiguous()))
        return FusedMLP(layers, self.actor_body.activation, self.actor_head.out_features)


__all__ = ["ENCODERS", "FusedMLP", "MLPEncoder", "NoMemory", "Policy", "encoder_name", "layer_init", "make_encoder"]
