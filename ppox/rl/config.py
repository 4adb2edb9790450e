"""PPOConfig: every hyperparameter of the classic-RL trainer, validated at construction.

The CLI (`ppox train --help`) is generated from this dataclass: each field's comment-free
docstring below becomes its help text and its default the flag's default. The objective's fields
(clipping, value loss, entropy, KL penalty, advantages) come from ppox.core.objective.ObjectiveConfig,
whose defaults are already CleanRL's.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np

from ppox.core.objective import ObjectiveConfig, accepts_deprecated_names, rename_deprecated
from ppox.errors import ConfigError
from ppox.rl.atari import suite_preset

# The CLI turns validation off while tyro builds the config, then validates once itself, so a bad
# value is reported as one plain line rather than inside tyro's parse-error box.
_validate_on_init = True


@accepts_deprecated_names
@dataclass
class PPOConfig(ObjectiveConfig):
    """Configuration of a PPO run on a gymnasium environment."""

    env_id: str | None = "CartPole-v1"
    """Gymnasium environment id (any registered id, e.g. CartPole-v1, HalfCheetah-v5). With the Python API's
    env_fn, PPO records the custom env's own name here (its registered id, else its class name)."""
    preset: str | None = None
    """Preset whose values replace these defaults before other flags apply (e.g. cleanrl, CartPole-v1)."""
    seed: int = 1
    """Seed of the environments, the network initialisation and the minibatch shuffling."""
    total_timesteps: int = 500_000
    """Environment steps to train for (summed over all envs)."""

    # rollout
    num_envs: int = 4
    """Parallel environments."""
    num_steps: int = 128
    """Steps per environment per rollout; the batch is num_envs * num_steps transitions."""
    env_backend: Literal["gymnasium", "numpy", "torch", "ale", "auto"] = "gymnasium"
    """'gymnasium' (the registered env), 'numpy' (ppox's batched numpy twins of CartPole, Acrobot,
    MountainCar, MountainCarContinuous, Pendulum: gymnasium's dynamics step for step, several times
    faster at a few envs), 'torch' (batched tensor envs of the same five, many envs at once, GPU) or
    'ale' (ALE games only: ALE's C++ vector env, opt-in, see docs/pixels.md) or 'auto' (numpy where a
    twin exists on a CPU without env_fn, else gymnasium). Evaluation always uses the registered gymnasium
    env."""
    vectorization: Literal["auto", "sync", "async"] = "auto"
    """How gymnasium envs are vectorised: sync (one process), async (a worker process per env), auto = sync."""
    rollout_backend: Literal["auto", "numpy", "torch"] = "auto"
    """How the rollout runs: 'numpy' (policy step and normalisation in numpy: fastest for small MLPs on a CPU
    with numpy or gymnasium envs), 'torch' (tensors on the device; any env, any policy) or 'auto' (where the
    update compiles on a CPU and the envs are ppox's numpy twins without normalisation: the compiled rollout, the
    policy and the twin's physics several steps per library call; else numpy where it applies, else torch).
    Where numpy does not apply (a GPU, torch envs, a shared trunk) torch runs instead."""

    # optimisation
    learning_rate: float = 2.5e-4
    """Adam learning rate (eps 1e-5)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over training."""
    update_epochs: int = 4
    """PPO epochs over each rollout (K)."""
    num_minibatches: int = 4
    """Minibatches per epoch; must divide num_envs * num_steps."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""

    # objective: ObjectiveConfig's fields and defaults (CleanRL's); the KL penalty here is PPO-Penalty's
    kl_penalty: Literal["none", "loss"] = "none"
    """PPO-Penalty: 'loss' adds kl_coef * KL(pi_old || pi) to the loss (alone or with clipping); 'none' = off."""

    # networks
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor and critic MLPs."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden activation."""
    shared_trunk: bool = False
    """Share one MLP trunk between actor and critic (default: separate networks)."""
    encoder: Literal["auto", "mlp", "cnn"] = "auto"
    """Observation encoder: 'auto' = a CNN for images (rank-3 uint8/bool Box: the Nature CNN, or MinAtar's
    for images under 36 pixels; a CNN per image of a Dict plus an MLP for its other keys), else an MLP;
    'mlp' flattens images (scaled to [0, 1]); 'cnn' requires an image. hidden_sizes are the MLP's widths."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy (continuous actions)."""
    memory: Literal["none", "lstm", "gru"] = "none"
    """Memory core between the encoder and the heads: 'lstm' or 'gru' (recurrent PPO: the hidden state is carried
    across steps and reset where an episode starts; minibatches are whole env sequences), 'none' = feed-forward."""
    memory_size: int = 128
    """Hidden size of the LSTM/GRU memory core."""
    bptt_length: int | None = None
    """Recurrent PPO: replay each env's rollout in chunks of this many steps (must divide num_steps), each from
    the state stored when it was collected; None = the whole rollout as one sequence (CleanRL's ppo_atari_lstm)."""
    action_masks: bool = True
    """Use the env's action masks where it gives them (its action_masks() method, info['action_mask'] or a Dict
    observation key 'action_mask'): masked actions get no probability and no gradient."""
    mask_velocity: bool = False
    """Zero the velocity entries of the observations (rl-zoo's MaskVelocityWrapper: CartPole, Acrobot,
    MountainCar, Pendulum, LunarLander): a partially observable task for recurrent policies."""

    # continuous-control wrappers
    norm_obs: bool = False
    """Normalise observations with running mean/std (clipped to +-10); frozen at evaluation."""
    norm_reward: bool = False
    """Scale rewards by the running std of the discounted return (clipped to +-10)."""
    clip_obs: float = 10.0
    """Clip normalised observations to +-clip_obs."""
    clip_reward: float = 10.0
    """Clip scaled rewards to +-clip_reward."""

    # run
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1, auto (cuda when available)."""
    torch_threads: int = 1
    """Torch intra-op threads; 1 is fastest for small MLPs (see docs/performance.md); 0 = torch default."""
    compile: bool | Literal["auto"] = "auto"
    """Compile the policy step and the minibatch update with torch.compile: 'auto' (the default) compiles where it
    pays off (a CPU with a C++ compiler or CUDA, plain Adam, no memory core, enough minibatch updates over the run
    to repay the compile time) and says once why or why not; --compile / --no-compile force it."""
    eval_episodes: int = 20
    """Episodes of the final deterministic evaluation (0 to skip) and of each periodic one (--eval-every)."""
    eval_every: int = 0
    """Evaluate the deterministic policy every N env steps on separate envs, keep the best model in RUN_DIR/best
    and log eval_return_mean (ppox.rl.callbacks.EvalCallback; 0 = off)."""
    stop_at_return: float | None = None
    """Stop training once a periodic evaluation's mean return reaches this value (needs --eval-every)."""
    run_dir: str | None = None
    """Run directory; default runs/<env>__<seed>__<timestamp>."""
    overwrite: bool = False
    """Allow writing into an existing run directory."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every N iterations (0 = only at the end and on interrupt)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep."""
    max_env_restarts: int = 10
    """Env faults (an async worker that raises or dies, NaN/Inf observations or rewards) survived per run:
    each restarts the envs and drops their in-progress episodes; one more saves a checkpoint and stops."""
    env_step_timeout: float | None = None
    """Seconds one env reset/step may take before it counts as an env fault (gymnasium envs, run in async
    worker processes when set; None = wait forever)."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    progress: bool = True
    """Show a progress bar."""
    live_doctor: bool = True
    """Warn (once per kind of problem) when the metrics look unhealthy during training (`ppox doctor`)."""
    wandb: bool = False
    """Also log metrics, config, summary and `ppox eval --video` videos to Weights & Biases (pip install
    'ppox[wandb]'; WANDB_MODE=offline logs without network)."""
    wandb_project: str = "ppox"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (user or team; default: the logged-in user's)."""
    wandb_run_name: str | None = None
    """W&B run name (default: the run directory's name)."""
    wandb_tags: tuple[str, ...] = ()
    """W&B tags."""

    def __post_init__(self) -> None:
        if isinstance(self.hidden_sizes, list):
            self.hidden_sizes = tuple(self.hidden_sizes)
        if _validate_on_init:
            self.validate()

    # ------------------------------------------------------------------ validation
    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        return max(1, self.total_timesteps // self.batch_size)

    def validate(self) -> None:
        _check_types(self)

        def positive(name: str) -> None:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")

        for name in ("total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches"):
            positive(name)
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("learning_rate", "max_grad_norm", "clip_obs", "clip_reward"):
            positive(name)
        super().validate()  # the objective's fields
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                f"num_envs * num_steps = {self.batch_size} is not divisible by num_minibatches = "
                f"{self.num_minibatches}"
            )
        if self.memory_size <= 0:
            raise ConfigError(f"memory_size must be > 0, got {self.memory_size}")
        if self.memory != "none":
            length = self.num_steps if self.bptt_length is None else self.bptt_length
            if length <= 0 or self.num_steps % length:
                raise ConfigError(f"bptt_length must divide num_steps = {self.num_steps}, got {self.bptt_length}")
            sequences = self.num_envs * (self.num_steps // length)
            if sequences % self.num_minibatches:
                raise ConfigError(
                    f"with memory {self.memory!r} a minibatch is a set of whole sequences: num_envs * num_steps / "
                    f"bptt_length = {sequences} sequences are not divisible by num_minibatches = {self.num_minibatches}"
                )
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.activation not in ("tanh", "relu"):
            raise ConfigError(f"activation must be tanh or relu, got {self.activation!r}")
        if self.env_backend not in ("gymnasium", "numpy", "torch", "ale", "auto"):
            raise ConfigError(f"env_backend must be gymnasium, numpy, torch, ale or auto, got {self.env_backend!r}")
        if self.vectorization not in ("auto", "sync", "async"):
            raise ConfigError(f"unknown vectorization {self.vectorization!r}")
        if self.env_backend == "ale" and (self.vectorization == "async" or self.env_step_timeout is not None):
            # ALE's C++ vector env steps in its own threads: neither worker processes nor their timeout apply
            raise ConfigError("env_backend ale runs ALE's own threaded vector env: it takes neither --vectorization "
                              "async nor --env-step-timeout (use env_backend gymnasium for those)")
        if self.rollout_backend not in ("auto", "numpy", "torch"):
            raise ConfigError(f"rollout_backend must be auto, numpy or torch, got {self.rollout_backend!r}")
        for name in ("eval_episodes", "eval_every", "checkpoint_every", "torch_threads", "max_env_restarts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stop_at_return is not None and self.eval_every == 0:
            raise ConfigError("stop_at_return needs periodic evaluation: set eval_every (e.g. --eval-every 10000)")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, 2**32 - 1], got {self.seed}")
        if not _DEVICE_RE.fullmatch(self.device):
            raise ConfigError(f"unknown device {self.device!r}; use cpu, cuda, cuda:N, mps or auto")
        if self.torch_threads > MAX_TORCH_THREADS:
            raise ConfigError(f"torch_threads must be <= {MAX_TORCH_THREADS}, got {self.torch_threads}")

    def wandb_settings(self) -> dict[str, Any] | None:
        """What ppox.tracking needs to open the run's W&B run (None without --wandb)."""
        if not self.wandb:
            return None
        return {"project": self.wandb_project, "entity": self.wandb_entity, "name": self.wandb_run_name,
                "tags": list(self.wandb_tags)}

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        if d["run_dir"] is not None:
            d["run_dir"] = str(d["run_dir"])  # a pathlib.Path from the Python API
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PPOConfig:
        """From a config.json dict; the deprecated names of a file written by an older ppox still load."""
        d = rename_deprecated(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> PPOConfig:
        return dataclasses.replace(self, **rename_deprecated(changes))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


MAX_SEED = 2**32 - 1  # numpy's legacy seeding (np.random.seed) accepts no more
MAX_TORCH_THREADS = 1024  # a thread pool far beyond any machine's cores exhausts memory and kills the process
_DEVICE_RE = re.compile(r"cpu|cuda|cuda:\d{1,4}|mps|auto")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "a list of strings" if typing.get_args(tp)[0] is str else "a list of integers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(value fits the annotation `tp`, the value in its canonical Python type)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is Literal:
        return (isinstance(value, str) and value in typing.get_args(tp)), value
    if origin is tuple:  # tuple[int, ...] or tuple[str, ...]
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_coerce(v, typing.get_args(tp)[0]) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    # bool is an int subclass in Python: True is not accepted as a number, nor 1 as a flag
    if tp is bool:
        return isinstance(value, (bool, np.bool_)), bool(value) if isinstance(value, (bool, np.bool_)) else value
    if tp is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        return ok, int(value) if ok else value
    if tp is float:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return True, value


def _check_types(config: PPOConfig) -> None:
    """Every field against its annotation (numbers made plain Python ints/floats), then floats finite."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "run_dir" and isinstance(value, os.PathLike):
            value = os.fspath(value)  # a pathlib.Path from the Python API
        ok, value = _coerce(value, hints[field.name])
        if not ok:
            raise ConfigError(f"{field.name} must be {_type_name(hints[field.name])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{field.name} must be a finite number, got {value}")
        object.__setattr__(config, field.name, value)


class deferred_validation:
    """Context manager: build PPOConfig instances without validating them (the caller validates)."""

    def __enter__(self) -> None:
        global _validate_on_init
        _validate_on_init = False

    def __exit__(self, *exc: object) -> None:
        global _validate_on_init
        _validate_on_init = True


def load_presets() -> dict[str, dict[str, Any]]:
    """Presets shipped with the package: {name: {field: value}} (names are env ids or aliases)."""
    text = resources.files("ppox").joinpath("presets/presets.toml").read_text()
    return tomllib.loads(text)


def load_preset_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Presets from a TOML file of tables like presets.toml's (`ppox train --preset-file`, `ppox tune`'s output)."""
    try:
        with open(path, "rb") as f:
            presets = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read preset file {path}: {exc}") from None
    if not presets or not all(isinstance(v, dict) for v in presets.values()):
        raise ConfigError(f"preset file {path} must hold one or more [name] tables of PPOConfig fields")
    return presets


def preset_config(env_id: str, preset: str | None = None, extra_presets: dict[str, dict[str, Any]] | None = None,
                  **overrides: Any) -> PPOConfig:
    """The config for `env_id`: the named preset, else the env's own preset, else CleanRL's defaults.

    Without a preset, continuous-action envs get CleanRL's continuous defaults (1 env x 2048 steps,
    32 minibatches, 10 epochs, lr 3e-4, observation and reward normalisation). `extra_presets`
    (load_preset_file) are chosen by name like the shipped ones.
    """
    presets = {**load_presets(), **(extra_presets or {})}
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            close = difflib.get_close_matches(preset, presets, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else f"; available: {', '.join(sorted(presets))}"
            raise ConfigError(f"unknown preset {preset!r}{hint}")
        values.update(presets[preset])
    elif env_id in presets:
        values.update(presets[env_id])
    elif suite_preset(env_id) is not None:  # ALE ids: the atari preset; MinAtar ids: minatar
        preset = suite_preset(env_id)
        values.update(presets[preset])
    values = {k: v for k, v in values.items() if k != "description"}
    values["env_id"] = env_id
    values["preset"] = preset if preset is not None else (env_id if env_id in presets else None)
    values.update(overrides)
    return PPOConfig.from_dict(values)

