"""The shipped randomised tasks as plain gymnasium envs (``gym.make("ppox/CartPoleRandomized-v0")``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppox.envs.numpy_envs import make_numpy_vec_env
from ppox.envs.randomization import RANDOMIZED_ENVS, Randomization

__all__ = ["RandomizedEnv", "register"]


class RandomizedEnv(gym.Env):
    """One randomised env as a plain gymnasium Env (``gym.make("ppox/CartPoleRandomized-v0")``): the
    numpy twin with one copy, its autoreset hidden. Evaluation and gymnasium-backend runs use it."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, env_id: str = "ppox/CartPoleRandomized-v0", randomization: Mapping[str, Any] | None = None,
                 max_episode_steps: int | None = None) -> None:
        rand = Randomization.from_dict(randomization) if isinstance(randomization, Mapping) else randomization
        kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
        self._vec = make_numpy_vec_env(env_id, 1, seed=None, randomization=rand, **kwargs)
        self._dict = isinstance(self._vec.single_observation_space, spaces.Dict)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self._pending: dict[str, np.ndarray] | None = None  # the next episode's first obs, drawn at autoreset

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or options is not None or self._pending is None:
            obs, _ = self._vec.reset(seed=seed, options=options)
            obs = self._first(obs)
        else:  # the twin already reset this env when its episode ended
            obs = self._pending
        self._pending = None
        return obs, {}

    def step(self, action):
        obs, reward, terminated, truncated, info = self._vec.step(np.asarray(action)[None])
        if terminated[0] or truncated[0]:
            self._pending = self._first(obs)
            obs = self._first(info["final_obs"])
        else:
            obs = self._first(obs)
        return obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def _first(self, batch):
        return {k: v[0] for k, v in batch.items()} if isinstance(batch, dict) else batch[0]


def register() -> None:
    """Register the shipped randomised ids with gymnasium (idempotent)."""
    for env_id in RANDOMIZED_ENVS:
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=RandomizedEnv, kwargs={"env_id": env_id},
                         disable_env_checker=True)
