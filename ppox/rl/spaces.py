"""Observation encoding and action distributions for gymnasium spaces.

Observations: images (rank-3 uint8/bool Box: kept uint8 (C, H, W), see `obs_storage`), Box (flattened),
Discrete (one-hot), Dict/Tuple of those (flattened, concatenated in the space's key order; a Dict holding
images is packed into uint8 rows instead, `PackedDict`, which its encoder unpacks). Actions: Discrete
(categorical), Box (diagonal Gaussian), MultiDiscrete (independent categoricals). Anything else is refused
with a clear error.
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


# ---------------------------------------------------------------------------- images
# An image observation is a rank-3 Box of uint8 (pixels 0..255) or bool (binary planes, MinAtar). It is
# never flattened: the rollout stores it as uint8 (num_envs, C, H, W), a quarter of float32's memory, and
# the policy's CNN encoder scales it to [0, 1] (ppox.rl.policy). Layout: gymnasium's images are HWC
# (render frames, MinAtar) unless the first axis is the short one (frame stacks: (4, 84, 84)).
IMAGE_DTYPES = (np.uint8, np.bool_)


def image_layout(space: spaces.Space) -> str | None:
    """"CHW" or "HWC" for an image observation space (rank-3 Box of uint8 or bool), else None.

    CHW where the first axis is shorter than the last ((4, 84, 84) frame stacks), else HWC ((210, 160, 3)
    frames, (10, 10, n) MinAtar planes; a cube is taken as HWC, gymnasium's convention)."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 3 or space.dtype not in IMAGE_DTYPES:
        return None
    return "CHW" if space.shape[0] < space.shape[-1] else "HWC"


def image_shape(space: spaces.Space) -> tuple[int, int, int]:
    """(C, H, W) of an image observation space."""
    shape = tuple(int(n) for n in space.shape)
    return shape if image_layout(space) == "CHW" else (shape[2], shape[0], shape[1])


def image_scale(space: spaces.Box) -> float:
    """The factor mapping an image space's values to [0, 1]: 1/255 for pixels, 1 for binary planes."""
    high = float(np.max(space.high))
    return 1.0 / high if high > 0 else 1.0


def has_image(space: spaces.Space) -> bool:
    """Whether the space is an image or a Dict holding one (directly)."""
    if isinstance(space, spaces.Dict):
        return any(image_layout(s) is not None for s in space.spaces.values())
    return image_layout(space) is not None


# A Dict holding images is stored packed: one uint8 row per observation, so that its pixels cost a byte
# each as a plain image's do and every reader of the rollout (minibatch gather, recurrent sequences,
# checkpoints) handles one tensor. The row holds first the float32 values of the other keys as raw bytes
# (4 per value; keys in the space's order, each encoded as `encode_flat` does), then each image's pixels
# (C, H, W) in key order. `unpack_dict` reads it back (a bitcast: the values are exact); the policy's
# DictEncoder scales the pixels to [0, 1] as CNNEncoder does for a plain image.
@dataclass(frozen=True)
class PackedDict:
    """Where the parts of a Dict holding images lie in its packed uint8 row (see above)."""

    vector_keys: tuple[str, ...]
    vector_width: int  # float32 values of the vector keys together: bytes 0 .. 4 * vector_width
    images: tuple[tuple[str, tuple[int, int, int]], ...]  # (key, (C, H, W)) in key order, after the vectors

    @property
    def nbytes(self) -> int:
        return 4 * self.vector_width + sum(c * h * w for _, (c, h, w) in self.images)


def packed_dict(space: spaces.Space) -> PackedDict | None:
    """The packed layout of a Dict observation space holding images, else None."""
    if not isinstance(space, spaces.Dict) or not has_image(space):
        return None
    vectors = [k for k, s in space.spaces.items() if image_layout(s) is None]
    return PackedDict(tuple(vectors), sum(obs_dim(space.spaces[k]) for k in vectors),
                      tuple((k, image_shape(s)) for k, s in space.spaces.items() if image_layout(s) is not None))


def obs_storage(space: spaces.Space) -> tuple[tuple[int, ...], torch.dtype]:
    """The shape of one encoded observation and its dtype: (C, H, W) uint8 for an image, (nbytes,) uint8 for
    a Dict holding images (`PackedDict`), else (obs_dim,) float32."""
    if image_layout(space) is not None:
        return image_shape(space), torch.uint8
    layout = packed_dict(space)
    if layout is not None:
        return (layout.nbytes,), torch.uint8
    return (obs_dim(space),), torch.float32


def unpack_dict(obs: torch.Tensor, layout: PackedDict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Packed rows uint8 (batch, nbytes) -> (the vector keys float32 (batch, vector_width), the images uint8
    [(batch, C, H, W)] in key order)."""
    width = 4 * layout.vector_width
    # a fresh contiguous copy of the few vector bytes: the bitcast needs rows that start 4-byte aligned
    vector = obs[:, :width].contiguous().view(torch.float32)
    images, start = [], width
    for _, shape in layout.images:
        end = start + shape[0] * shape[1] * shape[2]
        images.append(obs[:, start:end].reshape(obs.shape[0], *shape))
        start = end
    return vector, images


def obs_floats(obs: torch.Tensor | np.ndarray, space: spaces.Space) -> torch.Tensor | np.ndarray:
    """The float values of an encoded batch, for finiteness checks: the batch itself, or for a packed Dict
    its vector keys (batch, vector_width) (numpy or torch, as given; pixels are always finite)."""
    layout = packed_dict(space)
    if layout is None:
        return obs
    if isinstance(obs, np.ndarray):
        return np.ascontiguousarray(obs[:, :4 * layout.vector_width]).view(np.float32)
    return unpack_dict(obs, layout)[0]


def encode_image_np(obs: np.ndarray, space: spaces.Box) -> np.ndarray:
    """A batch of raw images (num_envs, *space.shape) -> a new uint8 array (num_envs, C, H, W)."""
    obs = np.asarray(obs)
    if image_layout(space) == "HWC":
        obs = obs.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(obs, dtype=np.uint8)


def encode_obs(obs, space: spaces.Space, device: torch.device | str = "cpu") -> torch.Tensor:
    """Batched raw observations (leading dim = num_envs) -> float32 tensor (num_envs, obs_dim), or for an
    image space uint8 (num_envs, C, H, W), for a Dict holding images packed uint8 rows (num_envs, nbytes)
    (see `obs_storage`)."""
    if image_layout(space) is not None:
        if isinstance(obs, torch.Tensor):
            t = obs.permute(0, 3, 1, 2) if image_layout(space) == "HWC" else obs
            return t.to(device=device, dtype=torch.uint8).contiguous()
        return torch.from_numpy(encode_image_np(obs, space)).to(device)
    layout = packed_dict(space)
    if layout is not None:
        parts = [torch.cat([encode_flat(obs[k], space.spaces[k], device) for k in layout.vector_keys],
                           dim=1).view(torch.uint8)] if layout.vector_keys else []
        parts += [encode_obs(obs[k], space.spaces[k], device).flatten(1) for k, _ in layout.images]
        return torch.cat(parts, dim=1)
    return encode_flat(obs, space, device)


def encode_flat(obs, space: spaces.Space, device: torch.device | str = "cpu") -> torch.Tensor:
    """(num_envs, obs_dim) float32, every key of a Dict flattened in its own layout, in key order: the
    storage of every observation that holds no image, and the input of an exported Dict policy
    (ppox.rl.export: a bitcast cannot be traced into ONNX)."""
    if isinstance(space, spaces.Box):
        t = obs if isinstance(obs, torch.Tensor) else torch.from_numpy(np.asarray(obs))
        return t.reshape(t.shape[0], -1).to(device=device, dtype=torch.float32)
    if isinstance(space, spaces.Discrete):
        t = obs if isinstance(obs, torch.Tensor) else torch.from_numpy(np.asarray(obs))
        idx = (t.to(device=device, dtype=torch.long) - int(space.start)).reshape(-1)
        return torch.nn.functional.one_hot(idx, int(space.n)).to(torch.float32)
    if isinstance(space, spaces.Dict):
        return torch.cat([encode_flat(obs[k], s, device) for k, s in space.spaces.items()], dim=-1)
    if isinstance(space, spaces.Tuple):
        return torch.cat([encode_flat(o, s, device) for o, s in zip(obs, space.spaces, strict=True)], dim=-1)
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


# ---------------------------------------------------------------------------- action distributions
# The action head of a policy is its `actor_head` Linear layer and one of these: how that layer's output
# (batch, spec.head_size) becomes a distribution over actions. Stateless: the Linear layer and the
# Gaussian log-std are the policy's parameters (ppox.rl.policy), so one is chosen per action space
# (`action_distribution`) and holds no weights. Written out by hand:
# torch.distributions validates and allocates on every call, which costs more than the tiny MLP
# forward pass at rollout batch sizes.

MASKED_LOGIT = -1e8  # a masked action's logit: probability 0, yet entropy terms p * log p stay finite (0)


class Categorical:
    """One categorical over `n` actions per row: head output (batch, n) = logits; actions (batch,).

    `mask` (batch, n) bool, True = allowed: masked actions get probability 0 (invalid-action masking).
    """

    def __init__(self, nvec: tuple[int, ...]) -> None:
        self.nvec = nvec

    def _logits(self, head: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        if mask is not None:
            head = torch.where(mask, head, MASKED_LOGIT)
        return [head] if len(self.nvec) == 1 else list(torch.split(head, list(self.nvec), dim=-1))

    def _stack(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0]

    def sample(
        self, head: torch.Tensor, log_std: torch.Tensor | None, deterministic: bool,
        mask: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Actions (batch,): the argmax when `deterministic`, else a draw by Gumbel-max from `noise`,
        uniform in (0, 1] of the head's shape (default: fresh from torch's generator)."""
        parts = []
        uniform = None if noise is None else self._logits(noise, None)
        for i, logits in enumerate(self._logits(head, mask)):
            if deterministic:
                parts.append(logits.argmax(dim=-1))
            else:
                # Gumbel-max: argmax(logits + Gumbel noise) is a sample from softmax(logits)
                u = (torch.rand_like(logits) if uniform is None else uniform[i].clone()).clamp_(1e-20, 1.0)
                parts.append((logits - torch.log(-torch.log(u))).argmax(dim=-1))
        return self._stack(parts)

    def log_prob_entropy(
        self, head: torch.Tensor, log_std: torch.Tensor | None, actions: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample log pi(a|s) and entropy H[pi(.|s)], both (batch,)."""
        if len(self.nvec) == 1:
            actions = actions.unsqueeze(-1)
        logp = torch.zeros(head.shape[0], device=head.device)
        entropy = torch.zeros(head.shape[0], device=head.device)
        for i, logits in enumerate(self._logits(head, mask)):
            log_probs = torch.log_softmax(logits, dim=-1)
            logp = logp + log_probs.gather(-1, actions[..., i : i + 1].long()).squeeze(-1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
        return logp, entropy


class MultiCategorical(Categorical):
    """Independent categoricals, one per component: head output (batch, sum(nvec)); actions (batch, len(nvec))."""

    def _stack(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts, dim=-1)


class DiagGaussian:
    """A diagonal Gaussian with a state-independent log-std: head output (batch, dim) = mean; actions
    (batch, dim), unclipped (the env adapter clips them to the bounds). Action masks do not apply."""

    def sample(
        self, head: torch.Tensor, log_std: torch.Tensor | None, deterministic: bool,
        mask: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean when `deterministic`, else mean + std * `noise` (standard normal; default fresh)."""
        if deterministic:
            return head
        return head + log_std.exp() * (torch.randn_like(head) if noise is None else noise)

    def log_prob_entropy(
        self, head: torch.Tensor, log_std: torch.Tensor | None, actions: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample log pi(a|s) and entropy H[pi(.|s)], both (batch,)."""
        std = log_std.exp()
        logp = (-0.5 * ((actions - head) / std) ** 2 - log_std - LOG_SQRT_2PI).sum(-1)
        entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(-1).expand(head.shape[0])
        return logp, entropy


ActionDistribution = Categorical | DiagGaussian


def action_distribution(spec: ActionSpec) -> ActionDistribution:
    """The action distribution for an action space: categorical (Discrete), multi-categorical (MultiDiscrete),
    diagonal Gaussian (Box)."""
    if spec.kind == "continuous":
        return DiagGaussian()
    return (Categorical if spec.kind == "discrete" else MultiCategorical)(spec.nvec)


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


# ---------------------------------------------------------------------------- JSON codec
# model.json records the spaces so that a saved model predicts without its env. Plain JSON, never
# pickle: a model file must not be able to run code. Decoding is bounded (nesting depth, element
# count) because model.json may come from anyone.

_BOX_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
               "uint8", "uint16", "uint32", "uint64", "bool")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
MAX_SPACE_DEPTH = 32


class SpaceDecodeError(ValueError):
    """A space description in model.json that is malformed or too large (the loader names the file)."""


def _num_to_json(x: float | int, integer: bool) -> float | int | str:
    if integer:
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _bounds_to_json(values: np.ndarray, integer: bool) -> float | int | str | list:
    flat = values.reshape(-1)
    if flat.size and (flat == flat[0]).all():
        return _num_to_json(flat[0], integer)  # the common case (one bound everywhere) stays small
    return [_num_to_json(v, integer) for v in flat.tolist()]


def space_to_json(space: spaces.Space) -> dict:
    """A JSON-serialisable description of a gymnasium space (Box, Discrete, MultiDiscrete, MultiBinary,
    Dict, Tuple); `space_from_json` rebuilds an equal space."""
    if isinstance(space, spaces.Box):
        dtype = np.dtype(space.dtype).name
        integer = dtype in _INT_DTYPES or dtype == "bool"
        return {"type": "Box", "shape": list(space.shape), "dtype": dtype,
                "low": _bounds_to_json(space.low, integer), "high": _bounds_to_json(space.high, integer)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist(),
                "dtype": np.dtype(space.dtype).name}
    if isinstance(space, spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(x) for x in n]}
    if isinstance(space, spaces.Dict):
        for key in space.spaces:
            if not isinstance(key, str):
                raise EnvError(f"Dict space key {key!r} is not a string; ppox can only save string keys")
        return {"type": "Dict", "spaces": [[k, space_to_json(s)] for k, s in space.spaces.items()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    raise EnvError(f"space {space} cannot be saved; ppox saves Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple")


def space_from_json(desc: object, max_elements: int) -> spaces.Space:
    """The space `space_to_json` described; SpaceDecodeError if `desc` is malformed or describes more
    than `max_elements` array elements in all (bounding the memory a hostile file can make us allocate)."""
    budget = [max_elements]
    return _decode_space(desc, budget, 0)


def _json_int(value: object, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**63:
        raise SpaceDecodeError(f"{what} must be an integer in [{low}, 2**63), got {value!r}")
    return value


def _json_shape(value: object, what: str, budget: list[int]) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 64:
        raise SpaceDecodeError(f"{what} must be a list of at most 64 dimensions, got {value!r}")
    shape = tuple(_json_int(v, f"{what} entries") for v in value)
    size = math.prod(shape)
    budget[0] -= size
    if budget[0] < 0:
        raise SpaceDecodeError(f"{what} {list(shape)} is larger than the model's weights allow")
    return shape


def _json_bound(value: object, shape: tuple[int, ...], dtype: str, what: str) -> float | int | np.ndarray:
    """A Box bound as saved: one number for every element, or a flat list of them."""

    integer = dtype in _INT_DTYPES or dtype == "bool"

    def one(v: object) -> float | int:
        if integer and (isinstance(v, bool) or not isinstance(v, int)):
            raise SpaceDecodeError(f"{what} holds {v!r}, not an integer for dtype {dtype}")
        if isinstance(v, str) and v in ("inf", "-inf"):
            return float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            raise SpaceDecodeError(f"{what} holds {v!r}, not a number")
        return v

    if not isinstance(value, list):
        return one(value)
    if len(value) != math.prod(shape):
        raise SpaceDecodeError(f"{what} has {len(value)} values for shape {list(shape)}")
    return np.array([one(v) for v in value], dtype=np.float64 if dtype == "bool" else np.dtype(dtype)).reshape(shape)


def _decode_space(desc: object, budget: list[int], depth: int) -> spaces.Space:
    if depth > MAX_SPACE_DEPTH:
        raise SpaceDecodeError(f"spaces nested deeper than {MAX_SPACE_DEPTH} levels")
    if not isinstance(desc, dict) or not isinstance(desc.get("type"), str):
        raise SpaceDecodeError(f"a space must be an object with a 'type', got {str(desc)[:80]!r}")
    budget[0] -= 1  # every node counts, so a long list of empty Tuples is bounded too
    if budget[0] < 0:
        raise SpaceDecodeError("the spaces have more parts than the model's weights allow")
    kind = desc["type"]
    try:
        if kind == "Box":
            shape = _json_shape(desc.get("shape"), "Box shape", budget)
            dtype = desc.get("dtype")
            if dtype not in _BOX_DTYPES:
                raise SpaceDecodeError(f"Box dtype must be one of {', '.join(_BOX_DTYPES)}, got {dtype!r}")
            low, high = (_json_bound(desc.get(k), shape, dtype, f"Box {k}") for k in ("low", "high"))
            return spaces.Box(low=low, high=high, shape=shape, dtype=np.dtype(dtype))
        if kind == "Discrete":
            return spaces.Discrete(_json_int(desc.get("n"), "Discrete n", 1),
                                   start=_json_int(desc.get("start", 0), "Discrete start", -(2**62)))
        if kind == "MultiDiscrete":
            raw = np.asarray(desc.get("nvec"), dtype=object)
            shape = _json_shape(list(raw.shape), "MultiDiscrete shape", budget)
            nvec = np.array([_json_int(v, "MultiDiscrete nvec", 1) for v in raw.reshape(-1)], dtype=np.int64)
            raw_start = np.asarray(desc.get("start", 0), dtype=object)
            if raw_start.shape not in ((), shape):
                raise SpaceDecodeError(f"MultiDiscrete start has shape {raw_start.shape}, nvec {shape}")
            start = np.array([_json_int(v, "MultiDiscrete start", -(2**62)) for v in raw_start.reshape(-1)],
                             dtype=np.int64)
            dtype = desc.get("dtype", "int64")
            if dtype not in _INT_DTYPES:
                raise SpaceDecodeError(f"MultiDiscrete dtype must be an integer type, got {dtype!r}")
            return spaces.MultiDiscrete(nvec.reshape(shape), dtype=np.dtype(dtype),
                                        start=start.reshape(shape) if raw_start.shape else start[0])
        if kind == "MultiBinary":
            n = desc.get("n")
            shape = _json_shape(n if isinstance(n, list) else [n], "MultiBinary n", budget)
            return spaces.MultiBinary(list(shape) if isinstance(n, list) else shape[0])
        if kind == "Dict":
            items = desc.get("spaces")
            if not isinstance(items, list) or not all(
                isinstance(i, list) and len(i) == 2 and isinstance(i[0], str) for i in items
            ):
                raise SpaceDecodeError("Dict spaces must be a list of [key, space] pairs")
            if len({k for k, _ in items}) != len(items):
                raise SpaceDecodeError("Dict space keys repeat")
            return spaces.Dict({k: _decode_space(s, budget, depth + 1) for k, s in items})
        if kind == "Tuple":
            items = desc.get("spaces")
            if not isinstance(items, list):
                raise SpaceDecodeError("Tuple spaces must be a list")
            return spaces.Tuple([_decode_space(s, budget, depth + 1) for s in items])
    except SpaceDecodeError:
        raise
    except (ValueError, TypeError, OverflowError, AssertionError) as exc:  # gymnasium's own checks
        raise SpaceDecodeError(f"invalid {kind} space: {exc}") from None
    raise SpaceDecodeError(f"unknown space type {kind!r}")
