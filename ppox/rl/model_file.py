"""The classic-RL model file: what PPO.save writes and PPO.load checks before allocating anything.

A model directory holds model.safetensors (the Policy's weights, the observation statistics) and model.json
(metadata: the observation and action spaces as JSON, the config). A file from a stranger must neither run
code nor size memory: the architecture is derived from the weight shapes in the safetensors header (read
without loading the tensors, its size bounded, every tensor's byte range checked against the file), and
model.json must agree with it.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppox.errors import EnvError, ModelFileError, PPOXError
from ppox.io import (
    PICKLE_MAGIC,
    parse_json,
)
from ppox.rl.config import PPOConfig
from ppox.rl.envs import EnvFn
from ppox.rl.spaces import (
    SpaceDecodeError,
    action_spec,
    obs_dim,
    space_from_json,
)

MAX_SAFETENSORS_HEADER = 16 * 2**20  # a header describes tensors; megabytes of it can only be hostile
_SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                            "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


class ObservationError(PPOXError, ValueError):
    """An observation passed to predict that fits neither the observation space nor a batch of it."""


def env_name(env: Any) -> str:
    """A truthful name for a user's env: its registered id, else its class name."""
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(getattr(env, "unwrapped", env)).__name__


def batch_size_of(obs: Any, space: Any, where: str) -> int | None:
    """None if `obs` is one observation of `space`, n if it is a batch of n; ObservationError otherwise."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        shape = tuple(np.shape(obs))
        if shape == tuple(space.shape):
            return None
        if len(shape) == len(space.shape) + 1 and shape[1:] == tuple(space.shape):
            return shape[0]
        expected = tuple(space.shape)
        batch = "(n, " + ", ".join(map(str, expected)) + ")"
        raise ObservationError(
            f"{where} has shape {shape}; this model's Box observation space takes one observation of shape "
            f"{expected} or a batch of shape {batch.replace(', )', ')')}"
        )
    if isinstance(space, gym.spaces.Discrete):
        values = obs.cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs)
        if values.ndim > 1 or not np.issubdtype(values.dtype, np.integer):
            raise ObservationError(
                f"{where} must be an integer or a 1-D batch of integers for {space}, got {values.dtype} of shape "
                f"{values.shape}"
            )
        if values.size and (values.min() < space.start or values.max() >= space.start + space.n):
            raise ObservationError(f"{where} holds values outside {space}")
        return None if values.ndim == 0 else values.shape[0]
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        if isinstance(space, gym.spaces.Dict):
            if not isinstance(obs, dict) or set(obs) != set(space.spaces):
                got = sorted(map(str, obs)) if isinstance(obs, dict) else type(obs).__name__
                raise ObservationError(f"{where} must be a dict with keys {sorted(space.spaces)}, got {got}")
            parts = [(obs[k], s, f"{where}[{k!r}]") for k, s in space.spaces.items()]
        else:
            if not isinstance(obs, (tuple, list)) or len(obs) != len(space.spaces):
                raise ObservationError(f"{where} must be a tuple of {len(space.spaces)} parts for {space}")
            parts = [(o, s, f"{where}[{i}]") for i, (o, s) in enumerate(zip(obs, space.spaces, strict=True))]
        sizes = {batch_size_of(o, s, w) for o, s, w in parts}
        if len(sizes) > 1:
            raise ObservationError(f"the parts of {where} disagree on the batch size ({sorted(map(str, sizes))})")
        return sizes.pop() if sizes else None
    raise ObservationError(f"observation space {space} is not supported")


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's header, without reading the tensors.

    The format: 8 bytes little-endian header length, the JSON header, the data. Every length, shape and
    byte range is checked against the file's size, so nothing read from it can make us allocate more.
    """
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(PICKLE_MAGIC):
            raise ModelFileError(
                f"{path} carries a pickle payload (torch.save format); ppox only loads safetensors files "
                "and never unpickles model files"
            )
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ModelFileError(
                f"{path} is not a valid safetensors file (header length {length} in a file of {size} bytes)"
            )
        header = parse_json(f.read(length), path)
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a valid safetensors file (its header is not a JSON object)")
    data_size = size - 8 - length
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            itemsize = _SAFETENSORS_DTYPE_BYTES[dtype]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*shape, begin, end)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path} is not a valid safetensors file (bad entry for tensor {name!r})") from None
        if not begin <= end <= data_size or end - begin != math.prod(shape) * itemsize:
            raise ModelFileError(
                f"{path} is not a valid safetensors file (tensor {name!r} of shape {shape} claims bytes "
                f"{begin}..{end} of {data_size})"
            )
        tensors[name] = (dtype, tuple(shape))
    return tensors


def architecture(header: dict[str, tuple[str, tuple[int, ...]]], path: Path) -> dict[str, Any]:
    """obs_dim, hidden_sizes, shared_trunk and head_size of the Agent whose weights `header` lists."""

    def shape(name: str) -> tuple[int, ...] | None:
        return header[name][1] if name in header else None

    if shape("agent.actor_body.0.weight") is None and any(k.startswith("agent.actor_body.") for k in header):
        # a CNN or Dict encoder: its exact shapes are checked against the network the spaces describe
        # (PPO.load); here only a bound on the observation's size, from the weights' size
        head = shape("agent.actor_head.weight")
        if head is None or len(head) != 2:
            raise ModelFileError(f"{path} holds no ppox actor network (actor_body / actor_head weights)")
        weights = sum(math.prod(s) for name, (_, s) in header.items() if name.startswith("agent."))
        return {"obs_dim": None, "obs_bound": 16 * weights, "hidden_sizes": None, "head_size": head[0],
                "shared_trunk": not any(k.startswith("agent.critic_body.") for k in header)}

    layers = []
    while (w := shape(f"agent.actor_body.{2 * len(layers)}.weight")) is not None:
        if len(w) != 2 or 0 in w or (layers and w[1] != layers[-1][0]):
            raise ModelFileError(f"{path}: actor layer {len(layers)} has weight shape {w}, which does not chain")
        layers.append(w)
    hidden = [w[0] for w in layers]
    head = shape("agent.actor_head.weight")
    core = shape("agent.core.cell.weight_hh")  # a memory core sits between the encoder and the heads
    if not hidden or head is None or len(head) != 2 or head[1] != (hidden[-1] if core is None else core[-1]):
        raise ModelFileError(f"{path} holds no ppox actor network (actor_body / actor_head weights)")
    return {"obs_dim": layers[0][1], "hidden_sizes": tuple(hidden), "head_size": head[0],
            "shared_trunk": "agent.critic_body.0.weight" not in header}


def load_spaces(meta: dict[str, Any], json_path: Path, arch: dict[str, Any], config: PPOConfig,
                 env_fn: EnvFn | None) -> tuple[Any, Any]:
    """The observation and action spaces of a saved model, checked against its weights.

    From model.json; a model.json written before the spaces were saved gets them from one env made
    the old way (env_fn, else the config's env id)."""
    saved = meta.get("spaces")
    if saved is None:
        observation_space, action_space = env_spaces(env_fn, config.env_id)
    else:
        if not isinstance(saved, dict):
            raise ModelFileError(f"{json_path}: spaces must be an object")
        try:
            # a space's elements are bounded by the weights: a Box obs of n elements feeds n inputs
            observation_space = space_from_json(saved.get("observation"), arch.get("obs_bound", arch["obs_dim"]) + 1024)
            action_space = space_from_json(saved.get("action"), arch["head_size"] + 16)
        except SpaceDecodeError as exc:
            raise ModelFileError(f"{json_path} holds an invalid space: {exc}") from None
    try:
        dim, spec = obs_dim(observation_space), action_spec(action_space)
    except EnvError as exc:
        raise ModelFileError(f"{json_path}: {exc}") from None
    if (arch["obs_dim"] is not None and dim != arch["obs_dim"]) or spec.head_size != arch["head_size"] or (
        "action_spec" in meta and meta["action_spec"] != spec.to_dict()
    ):
        raise ModelFileError(
            f"the model in {json_path.parent} was trained on {meta.get('env_id')} with observation space "
            f"{meta.get('observation_space')} and actions {meta.get('action_spec')}; the spaces here "
            f"({observation_space}, {action_space}) do not fit its weights ({arch['obs_dim']} inputs, "
            f"{arch['head_size']} action outputs)"
        )
    return observation_space, action_space


def env_spaces(env_fn: EnvFn | None, env_id: str | None) -> tuple[Any, Any]:
    """The spaces of one env made by `env_fn`, else from the registered `env_id` (closed at once)."""
    from ppox.rl.envs import make_single_env

    try:
        env = env_fn() if env_fn is not None else make_single_env(env_id)
    except PPOXError:
        raise
    except Exception as exc:
        raise EnvError(f"the env factory raised {type(exc).__name__}: {exc}") from None
    try:
        return env.observation_space, env.action_space
    finally:
        with contextlib.suppress(Exception):
            env.close()
