"""The policy of the classic-RL trainer: one module that rollout, update, evaluation, predict and saving share.

    observation --encoder--> features --memory core--> features --actor_head--> distribution --> actions
                                                                --critic_head--> V(s)

* encoder: turns an (encoded, ppox.rl.spaces.encode_obs) observation into features. Chosen by
  `make_encoder` from the observation space and the config (`encoder`): an MLP for flat vectors, a CNN
  for images (the Nature CNN, or MinAtar's for small ones), a CNN per image + an MLP for a Dict.
  The actor and the critic have separate encoders (`actor_body`, `critic_body`) unless
  `shared_trunk`, when the critic reads the actor's features.
* memory core: `core(features, state, episode_starts) -> (features, state)`; `NoMemory` passes the
  features through, `RecurrentCore` is an LSTM or GRU (config `memory`) whose state is reset where an
  episode starts (docs/memory.md).
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
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from ppox.errors import ConfigError
from ppox.rl.spaces import (
    ActionSpec,
    action_distribution,
    has_image,
    image_layout,
    image_scale,
    image_shape,
    obs_dim,
    packed_dict,
    unpack_dict,
)

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def layer_init(layer: nn.Linear | nn.Conv2d, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
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


class ImageMLPEncoder(MLPEncoder):
    """`--encoder mlp` on an image: uint8 (batch, C, H, W) flattened and scaled to [0, 1], then the MLP.
    Only on request: an image gets a CNN by default."""

    def __init__(self, space: spaces.Box, hidden_sizes: tuple[int, ...], activation: str) -> None:
        super().__init__(obs_dim(space), hidden_sizes, activation)
        self.scale = image_scale(space)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs.flatten(1).float() * self.scale)


class CNNEncoder(nn.Module):
    """Images uint8 (batch, C, H, W) -> features (batch, out_features), scaled to [0, 1] inside (detail:
    observations are stored as uint8 and divided by 255 in the network).

    H and W >= 36: the Nature CNN (Mnih et al. 2015; the 37 details' Atari network): 32 8x8/4, 64 4x4/2,
    64 3x3/1, then Linear 512, ReLU after each. Smaller images (MinAtar's 10x10) cannot pass its strides:
    MinAtar's own network (Young & Tian 2019): 16 3x3/1, then Linear 128. Orthogonal init, gain sqrt(2).
    """

    def __init__(self, channels: int, height: int, width: int, scale: float) -> None:
        super().__init__()
        if min(height, width) >= 36:
            convs, hidden = [(32, 8, 4), (64, 4, 2), (64, 3, 1)], 512
        elif min(height, width) >= 3:
            convs, hidden = [(16, 3, 1)], 128
        else:
            raise ConfigError(f"a CNN needs images of at least 3x3 pixels, got {height}x{width}")
        layers: list[nn.Module] = []
        for out, kernel, stride in convs:
            layers += [layer_init(nn.Conv2d(channels, out, kernel, stride)), nn.ReLU()]
            channels, height, width = out, (height - kernel) // stride + 1, (width - kernel) // stride + 1
        self.convs = nn.Sequential(*layers)
        self.fc = layer_init(nn.Linear(channels * height * width, hidden))
        self.out_features = hidden
        self.scale = scale

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.convs(obs.float() * self.scale)
        return torch.relu(self.fc(x.flatten(1)))


class DictEncoder(nn.Module):
    """A Dict observation holding images: one CNN per image key, one MLP over the other keys together (in
    key order), features concatenated (batch, out_features).

    Its input is either the packed uint8 rows the rollout stores (ppox.rl.spaces.PackedDict: the vector keys'
    float32 bytes, then each image (C, H, W)), or the Dict's float32 flat encoding (ppox.rl.spaces.encode_flat:
    keys in order, each image flattened in its own layout), which an exported policy takes because a bitcast
    cannot be traced (ppox.rl.export). Both give the same features; the CNNs scale the pixels to [0, 1]."""

    def __init__(self, space: spaces.Dict, hidden_sizes: tuple[int, ...], activation: str) -> None:
        super().__init__()
        self.layout = packed_dict(space)
        # the slices of the flat encoding: (start, end, shape, hwc) per image, (start, end) per vector key
        self.flat_images: list[tuple[int, int, tuple[int, ...], bool]] = []
        self.flat_vectors: list[tuple[int, int]] = []
        cnns = []
        start = 0
        for sub in space.spaces.values():
            end = start + obs_dim(sub)
            layout = image_layout(sub)
            if layout is None:
                self.flat_vectors.append((start, end))
            else:
                self.flat_images.append((start, end, tuple(sub.shape), layout == "HWC"))
                cnns.append(CNNEncoder(*image_shape(sub), image_scale(sub)))
            start = end
        self.cnns = nn.ModuleList(cnns)
        width = self.layout.vector_width
        self.mlp = MLPEncoder(width, hidden_sizes, activation) if width else None
        self.out_features = sum(c.out_features for c in cnns) + (self.mlp.out_features if self.mlp else 0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.dtype == torch.uint8:  # packed rows (batch, nbytes)
            vector, images = unpack_dict(obs, self.layout)
        else:  # the flat encoding (batch, obs_dim) float32
            images = []
            for start, end, shape, hwc in self.flat_images:
                image = obs[:, start:end].reshape(obs.shape[0], *shape)
                images.append(image.permute(0, 3, 1, 2) if hwc else image)
            vector = torch.cat([obs[:, a:b] for a, b in self.flat_vectors], dim=1)
        features = [cnn(image) for image, cnn in zip(images, self.cnns, strict=True)]
        if self.mlp is not None:
            features.append(self.mlp(vector))
        return torch.cat(features, dim=1)


PRIVILEGED_KEY = "privileged"  # a Dict observation's key the deployed policy will not have (ppox.rl.distill)
LATENT_DIM = 8  # width of the privileged latent z


class PrivilegedEncoder(nn.Module):
    """A Dict observation of vectors with a "privileged" key (e.g. the sampled physics of a randomised env,
    ppox.envs.randomization): the privileged part is embedded into a latent z (batch, LATENT_DIM) by a small
    MLP (64 units, then tanh-bounded z), and the trunk MLP reads the deployable keys concatenated with z
    (RMA's base policy: z enters the trunk, so the action may depend on obs and z jointly).

    `latent(obs)` is the named target of a distilled student (ppox.rl.distill), `features(deployable, z)` the
    trunk it reuses with its own estimate of z. Input: the Dict's flat encoding (keys in order)."""

    def __init__(self, space: spaces.Dict, hidden_sizes: tuple[int, ...], activation: str) -> None:
        super().__init__()
        self.deployable_parts: list[tuple[int, int]] = []
        start = 0
        for key, sub in space.spaces.items():
            end = start + obs_dim(sub)
            if key == PRIVILEGED_KEY:
                self.privileged_part = (start, end)
            else:
                self.deployable_parts.append((start, end))
            start = end
        self.deployable_dim = sum(b - a for a, b in self.deployable_parts)
        privileged_dim = self.privileged_part[1] - self.privileged_part[0]
        self.latent_encoder = nn.Sequential(layer_init(nn.Linear(privileged_dim, 64)), ACTIVATIONS[activation](),
                                            layer_init(nn.Linear(64, LATENT_DIM)), nn.Tanh())
        self.mlp = MLPEncoder(self.deployable_dim + LATENT_DIM, hidden_sizes, activation)
        self.out_features = self.mlp.out_features

    def deployable(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, obs_dim) flat Dict encoding -> (batch, deployable_dim): every key but the privileged one."""
        return torch.cat([obs[:, a:b] for a, b in self.deployable_parts], dim=1)

    def latent(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, obs_dim) -> z (batch, LATENT_DIM), from the privileged key alone."""
        a, b = self.privileged_part
        return self.latent_encoder(obs[:, a:b])

    def features(self, deployable: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(batch, deployable_dim), (batch, LATENT_DIM) -> (batch, out_features)."""
        return self.mlp(torch.cat([deployable, z], dim=1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.features(self.deployable(obs), self.latent(obs))


def has_privileged(space: spaces.Space) -> bool:
    """Whether `space` is a Dict of vectors (no images) with a "privileged" key."""
    return isinstance(space, spaces.Dict) and PRIVILEGED_KEY in space.spaces and not has_image(space)


def _cnn(space: spaces.Space, hidden_sizes: tuple[int, ...], activation: str) -> nn.Module:
    if isinstance(space, spaces.Dict):
        return DictEncoder(space, hidden_sizes, activation)
    return CNNEncoder(*image_shape(space), image_scale(space))


def _mlp(space: spaces.Space, hidden_sizes: tuple[int, ...], activation: str) -> nn.Module:
    if has_privileged(space):
        return PrivilegedEncoder(space, hidden_sizes, activation)
    if image_layout(space) is not None:
        return ImageMLPEncoder(space, hidden_sizes, activation)
    return MLPEncoder(obs_dim(space), hidden_sizes, activation)


# name -> factory(observation_space, hidden_sizes, activation); `make_encoder` picks one per space
ENCODERS = {"mlp": _mlp, "cnn": _cnn}
ENCODER_CHOICES = ("auto", *ENCODERS)
_WARNED_FLAT: set[str] = set()


def encoder_name(observation_space: spaces.Space, requested: str = "auto") -> str:
    """The encoder for an observation space: "cnn" for an image (rank-3 uint8/bool Box) or a Dict holding
    one (a CNN per image, ppox.rl.spaces.image_layout), else "mlp"; `requested` ("mlp", "cnn") overrides."""
    if requested not in ENCODER_CHOICES:
        raise ConfigError(f"encoder must be one of {', '.join(ENCODER_CHOICES)}, got {requested!r}")
    image = has_image(observation_space)
    if requested == "cnn" and not image:
        raise ConfigError(f"encoder cnn needs image observations (a rank-3 Box of uint8 or bool, or a Dict "
                          f"holding one); this observation space is {observation_space}")
    if requested != "auto":
        return requested
    if not image and isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 3:
        key = str(observation_space)
        if key not in _WARNED_FLAT:  # a float image: say once that it is flattened, and how to get a CNN
            _WARNED_FLAT.add(key)
            print(f"warning: observation space {observation_space} is a rank-3 Box of "
                  f"{observation_space.dtype}, not uint8 or bool: it is flattened into an MLP; for a CNN, "
                  "make the env return uint8 images", file=sys.stderr)
    return "cnn" if image else "mlp"


def make_encoder(observation_space: spaces.Space, hidden_sizes: tuple[int, ...], activation: str,
                 encoder: str = "auto") -> nn.Module:
    """A new observation encoder for `observation_space`; it has an `out_features` attribute."""
    return ENCODERS[encoder_name(observation_space, encoder)](observation_space, hidden_sizes, activation)


# ---------------------------------------------------------------------------- memory cores
class NoMemory(nn.Module):
    """The memory core of a policy without memory: the features pass through, the state stays None.

    A memory core maps (features (batch, n) or sequences (T, batch, n), state, episode_starts (batch,) or
    (T, batch) bool) to (features (batch, m) or (T, batch, m), new state), resetting the state of the rows
    whose episode starts before it reads their features.
    """

    def forward(
        self, features: torch.Tensor, state: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return features, state


class RecurrentCore(nn.Module):
    """An LSTM or GRU memory core (CleanRL's ppo_atari_lstm.py, sb3-contrib's RecurrentPPO).

    The state is one tensor (batch, state_size): [h, c] for an LSTM, h for a GRU; zeros where an episode
    starts (`episode_starts`). One parameter set, that of `cell` (nn.LSTMCell / nn.GRUCell), run by torch's
    kernels two ways:
    * one step (the rollout, predict, evaluation, export): the cell itself;
    * a sequence (the update): nn.LSTM's / nn.GRU's multi-step kernel (oneDNN on CPU, cuDNN on GPU) on the
      cell's parameters (the same gate layout), with no Python loop over time. The kernel cannot reset a
      state mid-sequence, so each sequence is cut where an episode starts into segments, padded into batches
      that start from the stored state (a sequence's first segment) or zeros (the others), run and gathered
      back (`_segments`; sb3-contrib pads its sequences the same way).
    tests/rl/test_memory.py pins both against nn.LSTM / nn.GRU and against each other (outputs, final states
    and gradients, resets included).
    Initialisation as CleanRL's: orthogonal weights (gain 1), zero biases.

    `unrolled` (set only while ppox.rl.fast traces a compiled update, `unrolled_memory`): a sequence runs as its
    steps, each the one-step path; a compiled graph then holds the whole replay with no data-dependent shapes.
    """

    unrolled = False

    def __init__(self, kind: str, in_features: int, size: int) -> None:
        super().__init__()
        if kind not in ("lstm", "gru"):
            raise ValueError(f"unknown memory core {kind!r}")
        self.kind, self.out_features = kind, size
        self.cell = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(in_features, size)
        for name, param in self.cell.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)
        self.state_size = 2 * size if kind == "lstm" else size

    def forward(
        self, features: torch.Tensor, state: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None,
        final_state: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step: features (batch, n), state (batch, state_size), episode_starts (batch,) -> (batch, size)
        and the new state. A sequence: features (T, batch, n), episode_starts (T, batch) -> (T, batch, size)
        and the state after the last step; `final_state=False` skips it (None; the update does not need it,
        and with resets inside a sequence it costs a packed instead of a padded kernel run)."""
        batch = features.shape[-2]
        if state is None:
            state = features.new_zeros(batch, self.state_size)
        if features.dim() == 2:
            if episode_starts is not None:
                state = state * (~episode_starts).unsqueeze(-1).to(state.dtype)
            if self.kind == "lstm":
                size = self.out_features
                state = torch.cat(self.cell(features, (state[:, :size], state[:, size:])), dim=-1)
            else:
                state = self.cell(features, state)
            return state[:, : self.out_features], state
        if self.unrolled:
            return self._unrolled(features, state, episode_starts)
        if episode_starts is None or not bool(episode_starts[1:].any()):
            if episode_starts is not None:
                state = state * (~episode_starts[0]).unsqueeze(-1).to(state.dtype)
            return self._kernel(features, state, None)
        return self._segments(features, state, episode_starts, final_state)

    def _unrolled(
        self, features: torch.Tensor, state: torch.Tensor, episode_starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A sequence (T, batch, n) as T one-step calls (the rollout's own step, resets included): fixed shapes
        whatever the episode starts, so that a compiled update (ppox.rl.fast) can hold it as one graph."""
        outputs = []
        for t in range(features.shape[0]):
            out, state = self(features[t], state, None if episode_starts is None else episode_starts[t])
            outputs.append(out)
        return torch.stack(outputs), state

    def _segments(
        self, features: torch.Tensor, state: torch.Tensor, episode_starts: torch.Tensor, final_state: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A sequence with episode starts inside: cut, pad, run the kernel, gather back (see the class).

        The segments, sorted by length, go into two padded batches, the longest `split` ones padded to the
        longest length and the rest to the longest of theirs, the split chosen to pad least: padding every
        segment to the longest would run ~1.4x the real steps on CartPole (measured over a 100k-step run).
        With `final_state` all go into one batch, packed, so that each segment stops at its own end."""
        steps, batch = episode_starts.shape
        cuts = episode_starts.T.clone()  # (batch, T): env-major, so that one env's segments are consecutive
        cuts[:, 0] = True  # every sequence starts a segment
        cuts = cuts.reshape(-1)  # (batch * T,)
        segment = cuts.cumsum(0) - 1  # (batch * T,) the segment of each step
        first = cuts.nonzero().squeeze(1)  # (segments,) the flat index of each segment's first step
        position = torch.arange(cuts.numel(), device=cuts.device) - first[segment]  # (batch * T,) within it
        lengths = first.diff(append=first.new_full((1,), cuts.numel()))  # (segments,)
        order = lengths.argsort(descending=True, stable=True)
        rank = torch.empty_like(order).index_put_((order,), torch.arange(order.numel(), device=order.device))
        sorted_lengths = lengths[order].tolist()
        count, longest = len(sorted_lengths), sorted_lengths[0]
        split = count if final_state else min(range(1, count + 1), key=lambda s: s * longest + (
            (count - s) * sorted_lengths[s] + 4 * longest if s < count else 0))
        rest = sorted_lengths[split] if split < count else 0
        # each step's row in the flat (longest * split + rest * (count - split), n) buffer of both batches,
        # time-major inside each
        r = rank[segment]  # (batch * T,)
        row = torch.where(r < split, position * split + r, longest * split + position * (count - split) + r - split)
        x = features.transpose(0, 1).reshape(batch * steps, -1)  # (batch * T, n) env-major
        flat = x.new_zeros(longest * split + rest * (count - split), x.shape[-1]).index_copy(0, row, x)
        # a segment starting at t = 0 continues the stored state unless its episode starts there; the others
        # start from zeros
        initial = state.new_zeros(count, self.state_size)  # (segments, state_size), sorted
        carried = state * (~episode_starts[0]).unsqueeze(-1).to(state.dtype)
        initial = initial.index_put((rank[segment[::steps]],), carried)
        out, final = self._kernel(flat[: longest * split].view(longest, split, -1), initial[:split],
                                  sorted_lengths if final_state else None)
        if split < count:
            rest_out, _ = self._kernel(flat[longest * split:].view(rest, count - split, -1), initial[split:], None)
            out = torch.cat([out.reshape(-1, out.shape[-1]), rest_out.reshape(-1, out.shape[-1])])
        out = out.reshape(-1, out.shape[-1]).index_select(0, row).reshape(batch, steps, -1).transpose(0, 1)
        return out, (final[rank[segment[steps - 1::steps]]] if final_state else None)

    def _kernel(
        self, x: torch.Tensor, state: torch.Tensor, lengths: list[int] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """torch's multi-step LSTM/GRU kernel (torch.lstm / torch.gru, what nn.LSTM / nn.GRU call) on the cell's
        parameters: x (L, batch, n) time-major, state (batch, state_size) -> outputs (L, batch, size), final
        state (batch, state_size). With `lengths` (batch, sorted longest first) the sequences are packed and
        each one's final state is the state after its own last step (padded, every sequence runs all L steps)."""
        cell, size, total = self.cell, self.out_features, x.shape[0]
        weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
        # has_biases, num_layers, dropout, train (keeps what the backward needs), bidirectional
        options = (True, 1, 0.0, torch.is_grad_enabled(), False)
        packed = None if lengths is None else nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths))
        # padded: (input, hx, ..., batch_first=False); packed: (data, batch_sizes, hx, ...)
        inputs = (x,) if packed is None else (packed.data, packed.batch_sizes)
        tail = (False,) if packed is None else ()
        h0 = state[:, :size].unsqueeze(0).contiguous()  # (1, batch, size): one layer
        with warnings.catch_warnings():
            # cuDNN copies the cell's four parameters into its one flat weight buffer at each call (the size of
            # the weights) and warns that it does: expected, the cell owns the parameters
            warnings.filterwarnings("ignore", "RNN module weights are not part of single contiguous chunk")
            if self.kind == "lstm":
                hx = (h0, state[:, size:].unsqueeze(0).contiguous())
                out, h, c = torch.lstm(*inputs, hx, weights, *options, *tail)
                final = torch.cat([h[0], c[0]], dim=-1)
            else:
                out, h = torch.gru(*inputs, h0, weights, *options, *tail)
                final = h[0]
        if packed is not None:
            out = nn.utils.rnn.pad_packed_sequence(packed._replace(data=out), total_length=total)[0]
        return out, final


def make_core(memory: str, in_features: int, memory_size: int) -> nn.Module:
    """The memory core: `NoMemory` for "none", else a `RecurrentCore` ("lstm", "gru")."""
    return NoMemory() if memory == "none" else RecurrentCore(memory, in_features, memory_size)


# names of a minibatch's entries that `Policy.forward` takes besides obs and actions (the update's forward and
# the compiled update pass exactly these)
FORWARD_INPUTS = ("action_mask", "state", "episode_starts")


def forward_inputs(mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of `Policy.forward` that a minibatch holds."""
    return {k: mb[k] for k in FORWARD_INPUTS if k in mb}


# ---------------------------------------------------------------------------- the policy
def _side_by_side(linears: Sequence[nn.Linear], same_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear layers run as one: (bias (sum of outs,), weight^T (in, sum of outs)). `same_input`: they read one
    input (weights stacked); else each its own slice of a concatenated input (weights block-diagonal)."""
    weights = [m.weight for m in linears]
    w = torch.cat(weights) if same_input else torch.block_diag(*weights)
    return torch.cat([m.bias for m in linears]), w.T.contiguous()


@dataclass
class FusedMLP:
    """Actor and critic as one MLP: layer 1 stacked, deeper layers block-diagonal, the last layer's output
    columns = [action head..., value]. `layers`: [(bias (out,), weight^T (in, out))]."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    activation: str
    head_size: int


@dataclass
class FusedMemory:
    """A recurrent policy of MLP encoders as one stack per stage, the actor's and the critic's side by side
    (one side with a shared trunk): `encoder` [(bias (out,), weight^T (in, out))], each layer followed by the
    activation; `cores` (1 or 2) LSTM / GRU cells of `size` units with block-diagonal gate matrices, gates grouped
    per core: w_ih^T (features, cores * gates * size), w_hh^T (cores * size, cores * gates * size), the biases
    (cores * gates * size,); `heads` (bias (head_size + 1,), weight^T (cores * size, head_size + 1)): the action
    head's outputs, then V(s). The state layout is the policy's: per core [h, c] (LSTM) or h (GRU)."""

    encoder: list[tuple[torch.Tensor, torch.Tensor]]
    activation: str
    kind: str
    cores: int
    size: int
    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor
    b_hh: torch.Tensor
    heads: tuple[torch.Tensor, torch.Tensor]
    head_size: int


class PolicyMethod(nn.Module):
    """Runs one method of a policy (`act`, `value`, ...) under torch.func.functional_call, which calls `forward`:
    its parameters are the policy's, named "policy.<name>" (the population's vmapped steps, the compiled rollout)."""

    def __init__(self, policy: nn.Module, method: str) -> None:
        super().__init__()
        self.policy = policy
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.policy, self.method)(*args, **kwargs)


class Policy(nn.Module):
    """Actor-critic: encoder(s), memory core, action head and value head (see the module docstring).

    With memory (`memory` "lstm" / "gru") the actor's features go through `core` and, with separate
    trunks, the critic's through its own `critic_core` (sb3-contrib RecurrentPPO's default); with a shared
    trunk both heads read the one core (CleanRL's ppo_atari_lstm.py). The recurrent state is one tensor
    (batch, state_size): the actor core's state, then the critic core's. `act`, `policy_action` and
    `head_and_value` then take `state` and `episode_starts` and also return the new state; `forward`
    takes whole sequences (see there).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        spec: ActionSpec,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: str = "tanh",
        shared_trunk: bool = False,
        init_log_std: float = 0.0,
        memory: str = "none",
        memory_size: int = 128,
        encoder: str = "auto",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.shared_trunk = shared_trunk
        self.distribution = action_distribution(spec)
        # construction order = parameter order = the initialisation's random draws: keep it
        self.actor_body = make_encoder(observation_space, hidden_sizes, activation, encoder)
        self.critic_body = (
            None if shared_trunk else make_encoder(observation_space, hidden_sizes, activation, encoder)
        )
        self.core = make_core(memory, self.actor_body.out_features, memory_size)
        self.critic_core = (
            None if shared_trunk or memory == "none" else make_core(memory, self.critic_body.out_features, memory_size)
        )
        features = self.actor_body.out_features if memory == "none" else memory_size
        self.actor_head = layer_init(nn.Linear(features, spec.head_size), gain=0.01)
        self.critic_head = layer_init(nn.Linear(features, 1), gain=1.0)
        if spec.kind == "continuous":
            self.log_std = nn.Parameter(torch.full((spec.dim,), float(init_log_std)))
        else:
            self.register_parameter("log_std", None)

    # ------------------------------------------------------------------ memory
    @property
    def recurrent(self) -> bool:
        """Whether the policy has a memory core (then it carries a state from step to step)."""
        return not isinstance(self.core, NoMemory)

    @property
    def state_size(self) -> int:
        """Width of the recurrent state (0 without memory)."""
        return sum(c.state_size for c in (self.core, self.critic_core) if isinstance(c, RecurrentCore))

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor | None:
        """The state at an episode's start, (batch, state_size) zeros; None without memory."""
        if not self.recurrent:
            return None
        device = device if device is not None else self.actor_head.weight.device
        return torch.zeros(batch, self.state_size, device=device)

    def _trunk(
        self, obs: torch.Tensor, state: torch.Tensor | None, episode_starts: torch.Tensor | None,
        final_state: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(actor features, critic features, new state) of a recurrent policy.

        One step: obs (batch, *obs_shape), state (batch, state_size), episode_starts (batch,) -> features
        (batch, m). Sequences: obs (n, L, *obs_shape), state (n, state_size) at each sequence's start,
        episode_starts (n, L) -> features (n * L, m), sequence-major; `final_state=False`: the new state is
        None (see `RecurrentCore.forward`).
        """
        sequence = episode_starts is not None and episode_starts.dim() == 2
        if sequence:
            n, length = episode_starts.shape
            obs = obs.reshape(n * length, *obs.shape[2:])
            episode_starts = episode_starts.T  # the cores run time-major: (L, n)
        if state is None:
            state = self.initial_state(episode_starts.shape[-1] if episode_starts is not None else obs.shape[0],
                                       obs.device)

        def run(body: nn.Module, core: RecurrentCore, core_state: torch.Tensor):
            features = body(obs)
            if sequence:
                features = features.reshape(n, length, -1).transpose(0, 1)
            features, core_state = core(features, core_state, episode_starts, final_state)
            if sequence:
                features = features.transpose(0, 1).reshape(n * length, -1)
            return features, core_state

        split = self.core.state_size
        actor, actor_state = run(self.actor_body, self.core, state[:, :split])
        if self.critic_core is None:
            return actor, actor, actor_state
        critic, critic_state = run(self.critic_body, self.critic_core, state[:, split:])
        return actor, critic, (torch.cat([actor_state, critic_state], dim=-1) if final_state else None)

    # ------------------------------------------------------------------ heads
    def head_and_value(
        self, obs: torch.Tensor, state: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(action head output (batch, head_size): logits or the Gaussian mean, V(s) (batch,)); a recurrent
        policy also returns the new state (see `_trunk` for the shapes)."""
        if self.recurrent:
            actor, critic, state = self._trunk(obs, state, episode_starts)
            return self.actor_head(actor), self.critic_head(critic).squeeze(-1), state
        features, _ = self.core(self.actor_body(obs))
        head = self.actor_head(features)
        if self.critic_body is not None:
            features = self.critic_body(obs)
        return head, self.critic_head(features).squeeze(-1)

    def value(
        self, obs: torch.Tensor, state: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """V(s): (batch, *obs_shape) -> (batch,); a recurrent policy reads `state` (the state is not returned:
        the rollout bootstraps from the carried state without moving it)."""
        if self.recurrent:
            return self.critic_head(self._trunk(obs, state, episode_starts)[1]).squeeze(-1)
        if self.critic_body is None:
            features, _ = self.core(self.actor_body(obs))
        else:
            features = self.critic_body(obs)
        return self.critic_head(features).squeeze(-1)

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor | None = None,
        state: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The update's forward, with gradients: (log pi(a|s), entropy, V(s)), each (batch,).

        A recurrent policy replays sequences: obs (n, L, *obs_shape), actions (n, L, *action_shape),
        action_mask (n, L, head_size), state (n, state_size) at each sequence's start, episode_starts
        (n, L); each output is then (n, L).
        """
        if not self.recurrent:
            head, value = self.head_and_value(obs)
            logprob, entropy = self.distribution.log_prob_entropy(head, self.log_std, actions, action_mask)
            return logprob, entropy, value
        shape = episode_starts.shape
        actor, critic, _ = self._trunk(obs, state, episode_starts, final_state=False)
        head, value = self.actor_head(actor), self.critic_head(critic).squeeze(-1)
        flat_actions = actions.reshape(head.shape[0], *actions.shape[2:])
        flat_mask = None if action_mask is None else action_mask.reshape(head.shape[0], -1)
        logprob, entropy = self.distribution.log_prob_entropy(head, self.log_std, flat_actions, flat_mask)
        return logprob.reshape(shape), entropy.reshape(shape), value.reshape(shape)

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, deterministic: bool = False, action_mask: torch.Tensor | None = None,
        noise: torch.Tensor | None = None, state: torch.Tensor | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Rollout step: (actions (batch, *action_shape), log pi(a|s) (batch,), V(s) (batch,)), and the new
        state (batch, state_size) for a recurrent policy.

        `noise`: the draw to sample with (see the distribution's `sample`); default fresh from torch's generator.
        """
        head, value, *new_state = self.head_and_value(obs, state, episode_starts)
        actions = self.distribution.sample(head, self.log_std, deterministic, action_mask, noise)
        logprob, _ = self.distribution.log_prob_entropy(head, self.log_std, actions, action_mask)
        return actions, logprob, value, *new_state

    @torch.no_grad()
    def policy_action(
        self, obs: torch.Tensor, deterministic: bool = True, action_mask: torch.Tensor | None = None,
        state: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Actions only (predict, evaluation): the critic is not run. A recurrent policy returns
        (actions, new state); its critic core still steps, so the state stays the rollout's."""
        if self.recurrent:
            actor, _, state = self._trunk(obs, state, episode_starts)
            return self.distribution.sample(self.actor_head(actor), self.log_std, deterministic, action_mask), state
        features, _ = self.core(self.actor_body(obs))
        return self.distribution.sample(self.actor_head(features), self.log_std, deterministic, action_mask)

    # ------------------------------------------------------------------ privileged latent (ppox.rl.distill)
    def latent(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's privileged latent z (batch, LATENT_DIM) of a policy with a PrivilegedEncoder."""
        return self.actor_body.latent(obs)

    def head_from_latent(self, deployable: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The action head's output (batch, head_size) from the deployable observation and a latent z
        (the teacher's own, or a student's estimate): the actor trunk and head, nothing privileged."""
        features, _ = self.core(self.actor_body.features(deployable, z))
        return self.actor_head(features)

    @property
    def fusable(self) -> bool:
        """Whether `fused_mlp()` can express this network: separate MLP encoders, no memory."""
        return (type(self.actor_body) is MLPEncoder and type(self.critic_body) is MLPEncoder  # not images
                and isinstance(self.core, NoMemory))

    @torch.no_grad()
    def fused_mlp(self) -> FusedMLP | None:
        """This network's actor and critic as one MLP of stacked / block-diagonal matrices (copies of the
        current weights), for the rollout's fast steps; None where it is not that architecture."""
        if not self.fusable:
            return None
        actor = [*self.actor_body.linears(), self.actor_head]
        critic = [*self.critic_body.linears(), self.critic_head]
        layers = [_side_by_side(pair, same_input=i == 0) for i, pair in enumerate(zip(actor, critic, strict=True))]
        return FusedMLP(layers, self.actor_body.activation, self.actor_head.out_features)

    @torch.no_grad()
    def fused_memory(self) -> FusedMemory | None:
        """This recurrent network as stacked / block-diagonal matrices (copies of the current weights), for the
        rollout's fast steps; None unless it is MLP encoder(s), LSTM/GRU core(s) and the two linear heads."""
        if not (self.recurrent and type(self.actor_body) is MLPEncoder
                and (self.critic_body is None or type(self.critic_body) is MLPEncoder)):
            return None
        bodies = [self.actor_body] if self.critic_body is None else [self.actor_body, self.critic_body]
        cells = [self.core.cell] if self.critic_core is None else [self.core.cell, self.critic_core.cell]
        encoder = [_side_by_side(linears, same_input=i == 0)
                   for i, linears in enumerate(zip(*(body.linears() for body in bodies), strict=True))]
        return FusedMemory(
            encoder, self.actor_body.activation, self.core.kind, len(cells), self.core.out_features,
            torch.block_diag(*(c.weight_ih for c in cells)).T.contiguous(),
            torch.block_diag(*(c.weight_hh for c in cells)).T.contiguous(),
            torch.cat([c.bias_ih for c in cells]), torch.cat([c.bias_hh for c in cells]),
            _side_by_side((self.actor_head, self.critic_head), same_input=len(cells) == 1),
            self.actor_head.out_features,
        )


__all__ = ["ENCODERS", "FORWARD_INPUTS", "LATENT_DIM", "PRIVILEGED_KEY", "CNNEncoder", "DictEncoder", "FusedMLP",
           "FusedMemory", "ImageMLPEncoder", "MLPEncoder", "NoMemory", "Policy", "PolicyMethod", "PrivilegedEncoder",
           "RecurrentCore", "encoder_name", "forward_inputs", "has_privileged", "layer_init", "make_core",
           "make_encoder"]
