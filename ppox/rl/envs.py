"""Vectorised environments behind one small interface that speaks torch tensors.

`VecEnv.step` returns everything the rollout needs as tensors on the training device, including
the true final observation of envs whose episode just ended (autoreset in the same step), and
tracks the undiscounted episode returns and lengths of the raw rewards.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from ppox.errors import EnvError
from ppox.rl.spaces import ActionSpec, action_spec, check_observation_space, encode_obs, obs_dim, to_env_action

EnvFn = Callable[[], gym.Env]


def check_env_id(env_id: str) -> None:
    """Raise EnvError with close matches when `env_id` is not registered."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium.registry for the ids"
    raise EnvError(f"unknown environment id {env_id!r}{hint}")


def make_single_env(env_id: str, **kwargs) -> gym.Env:
    check_env_id(env_id)
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        raise EnvError(f"{env_id} needs an optional dependency: {exc} (e.g. pip install 'ppox[mujoco]')") from None
    except gym.error.Error as exc:
        raise EnvError(f"could not create {env_id}: {exc}") from None


@dataclass
class StepResult:
    obs: torch.Tensor  # (num_envs, obs_dim) next observation (reset obs where an episode ended)
    reward: torch.Tensor  # (num_envs,)
    terminated: torch.Tensor  # (num_envs,) bool
    truncated: torch.Tensor  # (num_envs,) bool
    final_obs: torch.Tensor  # (num_envs, obs_dim) true last observation where an episode ended
    finished_returns: list[float]  # undiscounted returns of the episodes that ended this step
    finished_lengths: list[int]


class VecEnv:
    """num_envs copies of one environment, stepped together; autoreset in the same step."""

    def __init__(
        self,
        env_id: str | None,
        num_envs: int,
        seed: int,
        device: torch.device,
        backend: str = "gymnasium",
        vectorization: str = "auto",
        env_fn: EnvFn | None = None,
    ) -> None:
        self.device = device
        self.num_envs = num_envs
        self.seed = seed
        self.env_id = env_id
        if backend == "torch" and env_fn is None:
            from ppox.envs import TORCH_ENV_IDS, make_torch_vec_env

            if env_id not in TORCH_ENV_IDS:
                raise EnvError(
                    f"env_backend torch has no {env_id!r}; it has {', '.join(TORCH_ENV_IDS)} "
                    "(use --env-backend gymnasium)"
                )
            self.envs = make_torch_vec_env(env_id, num_envs, device=device, seed=seed)
        else:
            if env_fn is None:
                check_env_id(env_id)
                env_fn = lambda: make_single_env(env_id)  # noqa: E731
            mode = gym.vector.AutoresetMode.SAME_STEP
            try:
                if vectorization == "async":
                    self.envs = gym.vector.AsyncVectorEnv([env_fn] * num_envs, autoreset_mode=mode)
                else:
                    self.envs = gym.vector.SyncVectorEnv([env_fn] * num_envs, autoreset_mode=mode)
            except EnvError:
                raise
            except Exception as exc:  # a user's env factory failed: say so in one line
                raise EnvError(f"could not create the environment: {type(exc).__name__}: {exc}") from None
        self.single_observation_space = self.envs.single_observation_space
        self.single_action_space = self.envs.single_action_space
        check_observation_space(self.single_observation_space)
        self.spec: ActionSpec = action_spec(self.single_action_space)
        self.obs_dim = obs_dim(self.single_observation_space)
        self._episode_return = np.zeros(num_envs, dtype=np.float64)
        self._episode_length = np.zeros(num_envs, dtype=np.int64)

    def _encode(self, obs) -> torch.Tensor:
        return encode_obs(obs, self.single_observation_space, self.device)

    def reset(self) -> torch.Tensor:
        obs, _ = self.envs.reset(seed=self.seed)
        self._episode_return[:] = 0
        self._episode_length[:] = 0
        return self._encode(obs)

    def step(self, actions: torch.Tensor) -> StepResult:
        if isinstance(self.envs, gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv):
            env_actions = to_env_action(actions, self.spec)
        else:  # batched torch env: stays on the device
            env_actions = actions
        obs, reward, terminated, truncated, info = self.envs.step(env_actions)
        reward_np = reward.cpu().numpy() if isinstance(reward, torch.Tensor) else np.asarray(reward)
        term_np = terminated.cpu().numpy() if isinstance(terminated, torch.Tensor) else np.asarray(terminated)
        trunc_np = truncated.cpu().numpy() if isinstance(truncated, torch.Tensor) else np.asarray(truncated)
        if not np.all(np.isfinite(reward_np)):
            bad = int(np.flatnonzero(~np.isfinite(reward_np))[0])
            raise EnvError(f"environment {bad} returned a non-finite reward ({reward_np[bad]})")

        self._episode_return += reward_np
        self._episode_length += 1
        done = np.logical_or(term_np, trunc_np)
        finished_returns: list[float] = []
        finished_lengths: list[int] = []
        next_obs = self._encode(obs)
        final_obs = next_obs
        if done.any():
            finished_returns = self._episode_return[done].tolist()
            finished_lengths = self._episode_length[done].tolist()
            self._episode_return[done] = 0
            self._episode_length[done] = 0
            final_obs = next_obs.clone()
            idx = np.flatnonzero(done)
            raw_final = info["final_obs"]
            if isinstance(raw_final, torch.Tensor):
                final_obs[idx] = self._encode(raw_final[idx]) if raw_final.shape[0] else final_obs[idx]
            else:
                # gymnasium: an object array holding the last observation of each ended env
                for i in idx:
                    one = _batch_of_one(raw_final[i], self.single_observation_space)
                    final_obs[i] = self._encode(one)[0]
        if not torch.isfinite(next_obs).all():
            bad = int(torch.nonzero(~torch.isfinite(next_obs).all(dim=1))[0])
            raise EnvError(f"environment {bad} returned a non-finite observation")
        return StepResult(
            obs=next_obs,
            reward=torch.as_tensor(reward_np, dtype=torch.float32, device=self.device),
            terminated=torch.as_tensor(term_np, dtype=torch.bool, device=self.device),
            truncated=torch.as_tensor(trunc_np, dtype=torch.bool, device=self.device),
            final_obs=final_obs,
            finished_returns=finished_returns,
            finished_lengths=finished_lengths,
        )

    def close(self) -> None:
        self.envs.close()


def _batch_of_one(obs, space: gym.Space):
    """Wrap one env's raw observation in a leading batch dimension of 1, for encode_obs."""
    if isinstance(space, gym.spaces.Dict):
        return {k: _batch_of_one(obs[k], s) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_batch_of_one(o, s) for o, s in zip(obs, space.spaces, strict=True))
    return np.asarray(obs)[None]
