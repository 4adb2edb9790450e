"""Export a trained policy for deployment: ONNX (onnxruntime) or TorchScript, checked against `PPO.predict`.

The exported graph is the deterministic policy end to end, built from the one `Policy` module and the run's
own pieces, never a re-implementation of them:

    raw observation --encode_obs--> --frozen ObsNormalizer--> Policy.policy_action(deterministic=True)
                    --> to_env_action's clipping to the action bounds / offset of Discrete(start=k)

Inputs and outputs (batch dimension dynamic):
* `obs`: a Box observation batch (batch, *shape) as the env gives it (float32, or uint8 for images), or a
  Discrete one (batch,) int64. Dict and Tuple observations are fed encoded (ppox.rl.spaces.encode_flat: one
  float32 vector per observation); the command says so. An action mask in a Dict observation is not applied
  by the exported graph.
* recurrent policies also take `state` (batch, state_size) float32 and `episode_starts` (batch,) float32
  (1.0 where an episode starts: the state is reset there) and return `state_out`; start with zeros.
* `actions`: float32 (batch, dim) for Box actions, int64 (batch,) or (batch, k) for (Multi)Discrete.

At export time a batch of observations sampled from the observation space runs through the exported model
(onnxruntime / the TorchScript module) and through ppox (`PPO.predict`, with a random state and episode starts
for recurrent policies); the largest difference must be <= 1e-5, else the export fails.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from ppox.errors import PPOXError
from ppox.io import atomic_write_bytes
from ppox.rl.spaces import encode_flat, encode_obs

if TYPE_CHECKING:
    from ppox.rl.ppo import PPO

PARITY_TOLERANCE = 1e-5
PARITY_BATCH = 256


class DeployedPolicy(nn.Module):
    """The deterministic policy of a trained PPO as one module (see the module docstring)."""

    def __init__(self, model: PPO) -> None:
        super().__init__()
        self.policy = model.agent
        self.obs_norm = model.obs_norm  # frozen: its statistics become constants of the graph
        self.space = model.observation_space
        self.spec = model.spec
        self.raw_input = isinstance(self.space, spaces.Box | spaces.Discrete)
        if self.spec.kind == "continuous":
            self.register_buffer("low", torch.tensor(self.spec.low, dtype=torch.float32))
            self.register_buffer("high", torch.tensor(self.spec.high, dtype=torch.float32))
        start = self.spec.start if self.spec.kind == "multidiscrete" else self.spec.start[:1]
        self.register_buffer("offset", torch.tensor(start or [0], dtype=torch.int64))

    def forward(self, obs: torch.Tensor, state: torch.Tensor | None = None,
                episode_starts: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = encode_obs(obs, self.space) if self.raw_input else obs
        if self.obs_norm is not None:
            x = self.obs_norm(x, update=False)
        if self.policy.recurrent:
            actions, state = self.policy.policy_action(x, True, state=state, episode_starts=episode_starts > 0.5)
            return self._env_action(actions), state
        return self._env_action(self.policy.policy_action(x, True))

    def _env_action(self, actions: torch.Tensor) -> torch.Tensor:
        """to_env_action's arithmetic, in the graph: clip Box actions, shift Discrete(start=k) ones."""
        if self.spec.kind == "continuous":
            return torch.minimum(torch.maximum(actions, self.low), self.high)
        return actions + self.offset if bool(self.offset.any()) else actions


@dataclass
class ExportReport:
    path: Path
    format: str
    max_abs_diff: float
    batch: int
    inputs: list[str]
    outputs: list[str]
    note: str | None = None


def _sample_inputs(model: PPO, batch: int, seed: int) -> tuple[Any, torch.Tensor]:
    """(a batch of raw observations sampled from the space, the exported model's `obs` input for it)."""
    space = model.observation_space
    space.seed(seed)
    raw = [space.sample() for _ in range(batch)]
    if isinstance(space, spaces.Box):
        stacked = np.stack(raw)
        if np.issubdtype(stacked.dtype, np.floating):  # unbounded Box samples can be huge: keep them plausible
            stacked = np.clip(stacked, -10.0, 10.0).astype(space.dtype)
        return stacked, torch.from_numpy(stacked)
    if isinstance(space, spaces.Discrete):
        stacked = np.asarray(raw, dtype=np.int64)
        return stacked, torch.from_numpy(stacked)
    if isinstance(space, spaces.Dict):
        stacked = {k: np.stack([r[k] for r in raw]) for k in space.spaces}
    else:
        stacked = tuple(np.stack([r[i] for r in raw]) for i in range(len(space.spaces)))
    return stacked, encode_flat(stacked, space)


def export_policy(model: PPO, path: str | Path, fmt: Literal["onnx", "torchscript"] = "onnx",
                  batch: int = PARITY_BATCH, seed: int = 0) -> ExportReport:
    """Write the deterministic policy of `model` to `path` and check it against ppox (see the module docstring)."""
    path = Path(path)
    model._check_finite_weights()
    model.agent.eval()
    deployed = DeployedPolicy(model).cpu().eval() if model.device.type == "cpu" else DeployedPolicy(model)
    raw, obs = _sample_inputs(model, batch, seed)
    obs = obs.to(model.device)
    recurrent = model.agent.recurrent
    args: tuple[torch.Tensor, ...] = (obs,)
    inputs, outputs = ["obs"], ["actions"]
    if recurrent:
        generator = torch.Generator().manual_seed(seed)
        state = torch.randn(batch, model.agent.state_size, generator=generator).to(model.device)
        starts = (torch.rand(batch, generator=generator) < 0.25).float().to(model.device)
        args = (obs, state, starts)
        inputs, outputs = ["obs", "state", "episode_starts"], ["actions", "state_out"]
    note = None if deployed.raw_input else (
        f"the {type(model.observation_space).__name__} observation is an input encoded with "
        "ppox.rl.spaces.encode_flat (one float32 vector per observation)")
    if fmt == "onnx":
        data = _to_onnx(deployed, args, inputs, outputs)
        got = _run_onnx(data, args, inputs)
    elif fmt == "torchscript":
        data, got = _to_torchscript(deployed, args)
    else:
        raise PPOXError(f"unknown export format {fmt!r}; choose onnx or torchscript")
    expected = _reference(model, raw, args)
    diff = max(_max_diff(g, e) for g, e in zip(got, expected, strict=True))
    if not diff <= PARITY_TOLERANCE:
        raise PPOXError(f"the exported {fmt} policy differs from ppox's predict by {diff:.3g} (> "
                        f"{PARITY_TOLERANCE:g}) on {batch} observations; nothing was written")
    atomic_write_bytes(path, data)
    return ExportReport(path, fmt, diff, batch, inputs, outputs, note)


def _reference(model: PPO, raw: Any, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """What ppox itself answers for the same inputs: PPO.predict (with the state when recurrent)."""
    if not model.agent.recurrent:
        return [np.asarray(model.predict(raw, deterministic=True))]
    _, state, starts = args
    actions, new_state = model.predict(raw, state=state.cpu().numpy(), episode_start=starts.cpu().numpy() > 0.5,
                                       deterministic=True)
    return [np.asarray(actions), np.asarray(new_state)]


def _max_diff(got: np.ndarray, expected: np.ndarray) -> float:
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        raise PPOXError(f"the exported policy's output has shape {got.shape}, ppox's {expected.shape}")
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


def _to_onnx(deployed: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str]) -> bytes:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise PPOXError("ONNX export needs onnx and onnxruntime: pip install 'ppox[export]'") from None
    dynamic = {name: {0: "batch"} for name in [*inputs, *outputs]}
    buffer = io.BytesIO()
    # the TorchScript-based exporter: it captures the policy's data-dependent Python (recurrent resets,
    # Discrete offsets) as traced for this model, which is what a deployed, fixed policy is
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(deployed, args, buffer, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return buffer.getvalue()


def _run_onnx(data: bytes, args: tuple[torch.Tensor, ...], inputs: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = {name: a.cpu().numpy() for name, a in zip(inputs, args, strict=True)}
    return session.run(None, feed)


def _to_torchscript(deployed: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[bytes, list[np.ndarray]]:
    deployed = copy.deepcopy(deployed).requires_grad_(False)  # an inference module; the trainer keeps its own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(deployed, args, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)  # check the file as written, not the in-memory module
    with torch.no_grad():
        out = loaded(*args)
    out = out if isinstance(out, tuple) else (out,)
    return buffer.getvalue(), [o.cpu().numpy() for o in out]


__all__ = ["PARITY_TOLERANCE", "DeployedPolicy", "ExportReport", "export_policy"]
