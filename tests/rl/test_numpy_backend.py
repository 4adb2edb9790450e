"""env_backend numpy / auto: ppox's numpy twins behind VecEnv and the trainer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ppox.envs.numpy_envs import NumpyClassicControlVecEnv
from ppox.errors import EnvError
from ppox.rl.envs import VecEnv, resolve_env_backend
from ppox.rl.ppo import PPO

TINY = dict(num_steps=16, num_envs=4, total_timesteps=256, tensorboard=False, progress=False, eval_episodes=0,
            update_epochs=2, num_minibatches=2)
CPU = torch.device("cpu")


def test_auto_resolution():
    assert resolve_env_backend("auto", "CartPole-v1", CPU, None) == "numpy"
    assert resolve_env_backend("auto", "Acrobot-v1", CPU, None, "sync") == "numpy"
    assert resolve_env_backend("auto", "LunarLander-v3", CPU, None) == "gymnasium"
    assert resolve_env_backend("auto", "CartPole-v1", torch.device("cuda"), None) == "gymnasium"
    assert resolve_env_backend("auto", "CartPole-v1", CPU, lambda: None) == "gymnasium"
    assert resolve_env_backend("auto", "CartPole-v1", CPU, None, "async") == "gymnasium"
    assert resolve_env_backend("numpy", "CartPole-v1", CPU, lambda: None) == "gymnasium"
    with pytest.raises(EnvError, match="numpy has no"):
        VecEnv("HalfCheetah-v5", 2, 0, CPU, backend="numpy")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
def test_vecenv_numpy_steps_like_gymnasium(env_id):
    """Same seed and actions: the same StepResults (obs, final obs, flags, episode stats) as the
    gymnasium backend, with numpy actions (the CPU rollout) and with tensors."""
    a = VecEnv(env_id, 4, 3, CPU, backend="numpy")
    b = VecEnv(env_id, 4, 3, CPU, backend="gymnasium")
    assert isinstance(a.envs, NumpyClassicControlVecEnv) and a.numpy_backend and a.backend == "numpy"
    np.testing.assert_allclose(a.reset().numpy(), b.reset().numpy(), atol=1e-5)
    rng = np.random.default_rng(0)
    returns = []
    for t in range(700):
        act = rng.integers(0, a.single_action_space.n, size=4)
        if t % 2:
            ra, rb = a.step(act), b.step(act)
        else:
            ra, rb = a.step(torch.as_tensor(act)), b.step(torch.as_tensor(act))
            ra.obs, ra.final_obs, rb.obs, rb.final_obs = (x.numpy() for x in (ra.obs, ra.final_obs, rb.obs,
                                                                                rb.final_obs))
        assert ra.obs.dtype == np.float32 and ra.final_obs.dtype == np.float32
        np.testing.assert_allclose(ra.obs, rb.obs, atol=1e-5)
        np.testing.assert_allclose(ra.final_obs, rb.final_obs, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(ra.terminated), np.asarray(rb.terminated))
        np.testing.assert_array_equal(np.asarray(ra.truncated), np.asarray(rb.truncated))
        np.testing.assert_array_equal(np.asarray(ra.reward), np.asarray(rb.reward))
        np.testing.assert_allclose(ra.finished_returns, rb.finished_returns)
        assert ra.finished_lengths == rb.finished_lengths and ra.finished_envs == rb.finished_envs
        returns += ra.finished_returns
    assert returns  # episodes ended (truncations too, for MountainCar)


def test_training_on_numpy_cartpole_equals_gymnasium(tmp_path):
    """CartPole's twin is bit-identical to gymnasium's env, so training is too."""
    a = PPO("CartPole-v1", env_backend="numpy", run_dir=tmp_path / "a", **TINY)
    b = PPO("CartPole-v1", env_backend="gymnasium", run_dir=tmp_path / "b", **TINY)
    a.learn()
    b.learn()
    for (k, x), y in zip(a.agent.state_dict().items(), b.agent.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_auto_preset_trains_and_evaluates_on_gymnasium(tmp_path):
    model = PPO("Acrobot-v1", preset="cleanrl", compile=False, run_dir=tmp_path, **{**TINY, "total_timesteps": 128})
    assert model.config.env_backend == "auto" and model.envs.backend == "numpy"
    model.learn()
    result = model.evaluate(2)
    assert result["episodes"] == 2


def test_numpy_twin_steps_report_non_finite_values_naming_the_env():
    """The twins' step path checks observations with one float64 sum per array: a NaN names its env as the
    exact check does; finite values whose float32 sum would overflow are no error (and no warning)."""
    from ppox.rl.envs import NonFiniteEnvValue

    env = VecEnv("CartPole-v1", 4, 0, CPU, backend="numpy")
    env.reset()
    twin_step = env.envs.step

    def huge_obs(actions):  # entries near float32's max: finite, their sum is not
        obs, *rest = twin_step(actions)
        obs[0, 1] = obs[2, 3] = 3e38
        return (obs, *rest)

    env.envs.step = huge_obs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = env.step(np.zeros(4, dtype=np.int64))
    assert np.isfinite(result.obs).all() and result.obs[2, 3] == np.float32(3e38)
    env.envs.step = twin_step
    state = env.envs.state.copy()
    state[2, 3] = np.nan
    env.envs.state = state
    with pytest.raises(NonFiniteEnvValue, match="environment 2 returned a non-finite observation") as info:
        env.step(np.zeros(4, dtype=np.int64))
    assert info.value.index == 2


def test_discrete_observations_step_like_gymnasiums_vector_env(monkeypatch):
    """Discrete observations (FrozenLake) on the numpy step path (envs stepped directly, one-hot in numpy) give
    what gymnasium's SyncVectorEnv (same-step autoreset) + encode_obs give, episode ends included."""
    import gymnasium as gym

    import ppox.rl.envs as envs_module
    from ppox.rl.spaces import encode_obs

    direct = []
    step_sync_envs = envs_module._step_sync_envs
    monkeypatch.setattr(envs_module, "_step_sync_envs", lambda *a, **k: direct.append(1) or step_sync_envs(*a, **k))
    a = VecEnv("FrozenLake-v1", 4, 5, CPU, backend="gymnasium")
    b = gym.vector.SyncVectorEnv([lambda: gym.make("FrozenLake-v1")] * 4,
                                 autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    space = b.single_observation_space
    np.testing.assert_array_equal(a.reset().numpy(), encode_obs(b.reset(seed=5)[0], space).numpy())
    rng = np.random.default_rng(1)
    ends = 0
    for _ in range(200):
        act = rng.integers(0, 4, size=4)
        ra = a.step(act)
        obs, reward, terminated, truncated, info = b.step(act)
        final = np.where(terminated | truncated, info.get("final_obs", obs), obs).astype(np.int64)
        assert ra.obs.dtype == np.float32 and ra.obs.shape == (4, 16)
        np.testing.assert_array_equal(ra.obs, encode_obs(obs, space).numpy())
        np.testing.assert_array_equal(ra.final_obs, encode_obs(final, space).numpy())
        np.testing.assert_array_equal(ra.reward, reward.astype(np.float32))
        np.testing.assert_array_equal(ra.terminated, terminated)
        np.testing.assert_array_equal(ra.truncated, truncated)
        ends += len(ra.finished_envs)
    assert ends > 10 and len(direct) == 200
