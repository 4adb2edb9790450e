"""ppox.rl.envs: what VecEnv's numpy step does to actions and observations, and MuJoCo's warnings."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ppox.rl import envs as envs_module
from ppox.rl.envs import NonFiniteEnvValue, VecEnv, make_single_env


class Recorder(gym.Env):
    """Box([-2, -1], [3, 0.5]) actions, recorded; observation 0 turns NaN at step `nan_at`."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(np.array([-2.0, -1.0], np.float32), np.array([3.0, 0.5], np.float32))

    def __init__(self, nan_at: int = -1):
        self.actions: list[np.ndarray] = []
        self.nan_at = nan_at

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2), {}

    def step(self, action):
        self.actions.append(np.array(action))
        obs = np.zeros(2)
        if len(self.actions) == self.nan_at:
            obs[0] = np.nan
        return obs, 1.0, False, False, {}


def test_numpy_continuous_actions_are_clipped_to_the_bounds_like_np_clip():
    envs = VecEnv("Recorder", 2, 0, torch.device("cpu"), env_fn=Recorder)
    envs.reset()
    actions = np.array([[5.0, -7.0], [np.nan, 0.25]], np.float32)
    envs.step(actions)
    seen = [env.unwrapped.actions[-1] for env in envs.envs.envs]
    expected = np.clip(actions, [-2.0, -1.0], [3.0, 0.5])
    np.testing.assert_array_equal(np.stack(seen), expected)  # NaN stays NaN, as np.clip leaves it
    assert seen[0].tolist() == [3.0, -1.0]
    envs.close()


def test_a_non_finite_observation_names_its_env():
    envs = VecEnv("Recorder", 3, 0, torch.device("cpu"), env_fn=lambda: Recorder(nan_at=2))
    envs.reset()
    envs.step(np.zeros((3, 2), np.float32))
    with pytest.raises(NonFiniteEnvValue, match="environment 0 returned a non-finite observation"):
        envs.step(np.zeros((3, 2), np.float32))
    envs.close()


def test_mujoco_warnings_are_said_once_and_write_no_log_file(tmp_path, monkeypatch, capsys):
    """MuJoCo 4's default handler prints gymnasium HalfCheetah's deprecation warning for every env made and
    appends it to MUJOCO_LOG.TXT in the working directory."""
    mujoco = pytest.importorskip("mujoco")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(envs_module, "_WARNED", set())
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(None)
    try:
        for _ in range(3):
            make_single_env("HalfCheetah-v5").close()
        assert mujoco.get_mju_user_warning() is envs_module._mujoco_warning
    finally:
        mujoco.set_mju_user_warning(previous)
    err = capsys.readouterr().err
    assert err.count("warning: MuJoCo reported: compiler attribute 'settotalmass' is deprecated") == 1
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_a_warning_handler_the_process_set_is_kept():
    mujoco = pytest.importorskip("mujoco")
    previous = mujoco.get_mju_user_warning()
    seen: list[str] = []
    mujoco.set_mju_user_warning(seen.append)
    try:
        make_single_env("HalfCheetah-v5").close()
        assert mujoco.get_mju_user_warning() is not envs_module._mujoco_warning
        assert any("settotalmass" in m for m in seen)
    finally:
        mujoco.set_mju_user_warning(previous)


@pytest.mark.parametrize("space, actions, expected", [
    (gym.spaces.MultiDiscrete([3, 2], start=[-1, 5]), [[0, 1], [2, 0]], [[-1, 6], [1, 5]]),
    (gym.spaces.Discrete(3, start=-1), [0, 2], [-1, 1]),
    (gym.spaces.Discrete(3), [0, 2], [0, 2]),
])
def test_numpy_discrete_actions_get_the_spaces_offsets(space, actions, expected):
    class Offset(Recorder):
        action_space = space
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(2, np.float32), {}

        def step(self, action):
            self.actions.append(np.array(action))
            return np.zeros(2, np.float32), 0.0, False, False, {}

    envs = VecEnv("Offset", 2, 0, torch.device("cpu"), env_fn=Offset)
    envs.reset()
    envs.step(np.array(actions))
    assert [env.unwrapped.actions[-1].tolist() for env in envs.envs.envs] == expected
    envs.close()
