"""Domain randomisation of ppox's batched classic-control twins (numpy and torch).

A `Randomization` names per-env parameter ranges; a twin built with one samples a fresh set of
parameters for an env at each reset of that env (first reset and every autoreset), from the env's
own seeded generator, so a run is reproducible from its seed and every env draws its own values.
The physics is the twins' one definition: it reads each parameter as an attribute, a Python float
when not randomised (the unrandomised maths, bit for bit) and a per-env array/tensor when randomised
(`ClassicControl._set_physics` derives the dependent constants, e.g. CartPole's total mass).

A randomised env returns a Dict observation:

    "obs":        the deployable observation (the env's usual one, plus observation noise if randomised)
    "privileged": the sampled parameters, each mapped to [-1, 1] over its range, in `names()` order

Besides the physical parameters of each env (`ClassicControl.randomizable`), two parameters apply to
every env: ``obs_noise`` (std of Gaussian noise added to "obs" at every step) and ``action_delay``
(whole steps between an action and its effect; an episode starts with its first action repeated).

Shipped randomised tasks (`RANDOMIZED_ENVS`; ppox.envs.registered registers them with gymnasium) are chosen by id:
``ppox/CartPoleRandomized-v0``, ``ppox/PendulumRandomized-v0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

__all__ = ["RANDOMIZED_ENVS", "RANDOMIZED_ENV_IDS", "Randomization", "randomized_base"]

# parameters every randomised env has, besides its physical ones
COMMON_PARAMETERS = {"obs_noise": 0.0, "action_delay": 0.0}
PRIVILEGED_KEY = "privileged"
DEPLOYABLE_KEY = "obs"


@dataclass(frozen=True)
class Randomization:
    """Per-env parameter ranges, sampled at every reset of that env.

    `uniform`: name -> (low, high), uniform in [low, high] (``action_delay``: a whole number of steps,
    uniform over low..high inclusive). `choice`: name -> values, one of them with equal probability
    (e.g. ``{"actuator_sign": (-1.0, 1.0)}``). Parameters named in neither keep the env's defaults.
    """

    uniform: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    choice: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uniform", {k: (float(lo), float(hi)) for k, (lo, hi) in self.uniform.items()})
        object.__setattr__(self, "choice", {k: tuple(float(v) for v in vs) for k, vs in self.choice.items()})
        for name, (lo, hi) in self.uniform.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"randomisation range of {name} must be finite with low <= high, got ({lo}, {hi})")
        for name, values in self.choice.items():
            if not values or not all(math.isfinite(v) for v in values):
                raise ValueError(f"randomisation choice of {name} needs one or more finite values, got {values}")
        both = set(self.uniform) & set(self.choice)
        if both:
            raise ValueError(f"{', '.join(sorted(both))}: given both a uniform range and a choice")
        if "obs_noise" in self.names() and self.bounds("obs_noise")[0] < 0:
            raise ValueError("obs_noise is a standard deviation: it must be >= 0")
        if "action_delay" in self.names():
            lo, hi = self.bounds("action_delay")
            values = self.choice.get("action_delay", (lo, hi))
            if lo < 0 or any(v != int(v) for v in values):
                raise ValueError(f"action_delay counts whole steps >= 0, got {values}")

    def names(self) -> tuple[str, ...]:
        """The randomised parameters, sorted: the order of the privileged vector."""
        return tuple(sorted({*self.uniform, *self.choice}))

    def bounds(self, name: str) -> tuple[float, float]:
        """(smallest, largest) value `name` can take."""
        if name in self.uniform:
            return self.uniform[name]
        return min(self.choice[name]), max(self.choice[name])

    def max_delay(self) -> int:
        return int(self.bounds("action_delay")[1]) if "action_delay" in self.names() else 0

    def check(self, env_name: str, randomizable: Mapping[str, float]) -> None:
        """ValueError naming the parameters `env_name` does not have."""
        known = {**randomizable, **COMMON_PARAMETERS}
        unknown = [n for n in self.names() if n not in known]
        if unknown:
            raise ValueError(f"{env_name} has no randomisable parameter {', '.join(unknown)}; "
                             f"it has {', '.join(sorted(known))}")

    def values(self, u: Any) -> list[Any]:
        """Parameter values from uniform draws `u` in [0, 1), one row per name (numpy or torch, (k, n)):
        the one mapping both twins use."""
        rows = []
        for row, name in zip(u, self.names(), strict=True):
            if name in self.uniform:
                lo, hi = self.uniform[name]
                if name == "action_delay":  # low..high inclusive
                    value = _floor(row * (hi - lo + 1)) + lo
                    rows.append(value.clip(lo, hi) if isinstance(value, np.ndarray) else value.clamp(lo, hi))
                else:
                    rows.append(lo + (hi - lo) * row)
            else:
                options = self.choice[name]
                index = _floor(row * len(options))
                if isinstance(index, np.ndarray):
                    rows.append(np.asarray(options)[np.minimum(index, len(options) - 1).astype(np.int64)])
                else:
                    table = torch.tensor(options, dtype=row.dtype, device=row.device)
                    rows.append(table[index.long().clamp(max=len(options) - 1)])
        return rows

    def normalized(self, values: Any) -> Any:
        """(k, n) parameter values -> the privileged observation in [-1, 1], (k, n) (a fixed parameter: 0)."""
        lo = [self.bounds(n)[0] for n in self.names()]
        hi = [self.bounds(n)[1] for n in self.names()]
        if isinstance(values, np.ndarray):
            lo_a, hi_a = np.asarray(lo)[:, None], np.asarray(hi)[:, None]
            return np.where(hi_a > lo_a, 2 * (values - lo_a) / np.maximum(hi_a - lo_a, 1e-12) - 1, 0.0)
        lo_t = torch.tensor(lo, dtype=values.dtype, device=values.device)[:, None]
        hi_t = torch.tensor(hi, dtype=values.dtype, device=values.device)[:, None]
        return torch.where(hi_t > lo_t, 2 * (values - lo_t) / (hi_t - lo_t).clamp_min(1e-12) - 1,
                           torch.zeros_like(values))

    def to_dict(self) -> dict[str, Any]:
        return {"uniform": {k: list(v) for k, v in self.uniform.items()},
                "choice": {k: list(v) for k, v in self.choice.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Randomization:
        return cls(uniform={k: tuple(v) for k, v in d.get("uniform", {}).items()},
                   choice={k: tuple(v) for k, v in d.get("choice", {}).items()})


def _floor(x):
    return np.floor(x) if isinstance(x, np.ndarray) else torch.floor(x)


def observation_space(obs_space: spaces.Box, randomization: Randomization, privileged: bool) -> spaces.Space:
    """The observation space of a randomised env whose deployable observations are `obs_space`: a Dict
    of "obs" and "privileged", or (`privileged` False, the blind variant) the deployable Box alone."""
    k = len(randomization.names())
    if "obs_noise" in randomization.names():  # noise can push an observation past its bounds
        obs_space = spaces.Box(-np.inf, np.inf, obs_space.shape, np.float32)
    if not privileged:
        return obs_space
    return spaces.Dict({DEPLOYABLE_KEY: obs_space,
                        PRIVILEGED_KEY: spaces.Box(-1.0, 1.0, (k,), np.float32)})


# ---------------------------------------------------------------------------- shipped tasks
# the actuator's sign flips from episode to episode: a memoryless policy that sees only "obs" cannot know
# which way its push goes; a few steps of history (or the privileged key) tell it
CARTPOLE_RANDOMIZATION = Randomization(
    uniform={"length": (0.3, 0.7), "masspole": (0.05, 0.2), "masscart": (0.7, 1.3), "actuator_gain": (0.7, 1.3),
             "obs_noise": (0.0, 0.01)},
    choice={"actuator_sign": (-1.0, 1.0)})
PENDULUM_RANDOMIZATION = Randomization(
    uniform={"m": (0.5, 1.5), "pole_length": (0.6, 1.4), "g": (8.0, 12.0), "actuator_gain": (0.6, 1.4),
             "obs_noise": (0.0, 0.02), "action_delay": (0, 1)})
#: env id -> (the gymnasium id of the twin it randomises, its randomisation, whether it has the privileged key).
#: A "Blind" id is the same task without the privileged key: what a deployed policy sees.
RANDOMIZED_ENVS: dict[str, tuple[str, Randomization, bool]] = {
    "ppox/CartPoleRandomized-v0": ("CartPole-v1", CARTPOLE_RANDOMIZATION, True),
    "ppox/CartPoleRandomizedBlind-v0": ("CartPole-v1", CARTPOLE_RANDOMIZATION, False),
    "ppox/PendulumRandomized-v0": ("Pendulum-v1", PENDULUM_RANDOMIZATION, True),
    "ppox/PendulumRandomizedBlind-v0": ("Pendulum-v1", PENDULUM_RANDOMIZATION, False),
}
RANDOMIZED_ENV_IDS: tuple[str, ...] = tuple(RANDOMIZED_ENVS)


def blind_id(env_id: str) -> str | None:
    """The id of `env_id`'s task without the privileged key (None if it has no such variant)."""
    if env_id not in RANDOMIZED_ENVS:
        return None
    base, randomization, _ = RANDOMIZED_ENVS[env_id]
    return next((k for k, (b, r, p) in RANDOMIZED_ENVS.items() if b == base and r == randomization and not p), None)


def randomized_base(env_id: str, randomization: Randomization | None = None,
                    privileged: bool | None = None) -> tuple[str, Randomization | None, bool]:
    """(the twin's gymnasium id, the randomisation, privileged key?) of `env_id`: a shipped randomised id gives
    its own unless overridden; another id gives (env_id, randomization, privileged or True)."""
    if env_id in RANDOMIZED_ENVS:
        base, shipped, has_key = RANDOMIZED_ENVS[env_id]
        return (base, randomization if randomization is not None else shipped,
                has_key if privileged is None else privileged)
    return env_id, randomization, True if privileged is None else privileged
