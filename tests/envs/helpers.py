"""Shared setup of the env-twin tests: random states and actions, gymnasium's reference step, space checks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

ATOL = 1e-5


def random_states(env_id: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """States covering the reachable region, terminal and clipped edges included."""
    pi = np.pi
    if env_id == "CartPole-v1":
        low, high = [-2.6, -3.0, -0.25, -3.0], [2.6, 3.0, 0.25, 3.0]
    elif env_id == "Acrobot-v1":
        low, high = [-pi, -pi, -4 * pi, -9 * pi], [pi, pi, 4 * pi, 9 * pi]
    elif env_id.startswith("MountainCar"):
        # Overshoot the left wall so the clip + velocity reset path is hit.
        low, high = [-1.3, -0.07], [0.6, 0.07]
    else:  # Pendulum: theta is not wrapped by gymnasium, so go past +-pi.
        low, high = [-3 * pi, -8.0], [3 * pi, 8.0]
    states = rng.uniform(low, high, size=(n, len(low)))
    if env_id.startswith("MountainCar"):
        states[:, 0] = states[:, 0].clip(-1.2, 0.6)
    # float32-representable values, so both sides start from the same state
    # even when the torch env simulates in float32.
    return states.astype(np.float32).astype(np.float64)


def random_actions(env: gym.vector.VectorEnv, n: int, rng: np.random.Generator) -> np.ndarray:
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=n)
    # Beyond the bounds too, to check that the env clips like gymnasium.
    return rng.uniform(1.5 * space.low, 1.5 * space.high, size=(n, *space.shape)).astype(np.float32)


def random_step_inputs(env_id: str, env: gym.vector.VectorEnv, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The (states, actions) of the one-step tests: the same draws for every twin."""
    rng = np.random.default_rng(123)
    states = random_states(env_id, n, rng)
    return states, random_actions(env, n, rng)


def gymnasium_step(env_id: str, states: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """One step of gymnasium's own env from each state: next obs, reward, terminated, raw next state."""
    ref = gym.make(env_id).unwrapped
    ref.reset(seed=0)
    out: dict[str, list] = {"obs": [], "reward": [], "terminated": [], "state": []}
    for state, action in zip(states, actions, strict=True):
        ref.state = state.copy()
        ref.steps_beyond_terminated = None  # CartPole: avoid its post-termination reward
        o, r, term, _, _ = ref.step(action)
        out["obs"].append(o)
        out["reward"].append(r)
        out["terminated"].append(term)
        out["state"].append(np.asarray(ref.state, dtype=np.float64))
    ref_step = {k: np.array(v) for k, v in out.items()}
    if env_id != "Pendulum-v1":
        # The sample must exercise termination, or a comparison with it is vacuous.
        assert 0 < ref_step["terminated"].sum() < len(states)
    return ref_step


def assert_spaces_like_gymnasium(env: gym.vector.VectorEnv, env_id: str, n: int) -> gym.Env:
    """A twin's spaces equal gymnasium's (single and batched), with same-step autoreset; returns the reference env."""
    ref = gym.make(env_id)
    assert env.num_envs == n
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.single_observation_space == ref.observation_space
    assert env.single_action_space == ref.action_space
    assert env.observation_space == batch_space(ref.observation_space, n)
    assert env.action_space == batch_space(ref.action_space, n)
    return ref
