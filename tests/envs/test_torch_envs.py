"""Batched torch classic-control envs against gymnasium's reference implementations."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ppox.envs import TORCH_ENV_IDS, make_torch_vec_env
from tests.envs.helpers import ATOL, assert_spaces_like_gymnasium, gymnasium_step, random_step_inputs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_dynamics_match_gymnasium(env_id: str, device: str) -> None:
    n = 500
    env = make_torch_vec_env(env_id, n, device=device, seed=0)
    env.reset()

    states, actions = random_step_inputs(env_id, env, n)
    env.state = torch.as_tensor(states)
    obs, reward, terminated, truncated, info = env.step(torch.as_tensor(actions, device=device))
    ref = gymnasium_step(env_id, states, actions)

    # final_obs holds the true next observation of every env (ended or not).
    np.testing.assert_allclose(info["final_obs"].cpu().numpy(), ref["obs"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(reward.cpu().numpy(), ref["reward"], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(terminated.cpu().numpy(), ref["terminated"])
    assert not truncated.any()
    # Envs that did not end continue from exactly that observation.
    alive = ~terminated
    torch.testing.assert_close(obs[alive], info["final_obs"][alive], rtol=0, atol=0)
    # The raw state too (it carries what obs hides, e.g. Acrobot's angle wrapping).
    np.testing.assert_allclose(
        env.state[alive].cpu().numpy(), ref["state"][alive.cpu().numpy()], rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_spaces_shapes_and_dtypes(env_id: str) -> None:
    n = 7
    env = make_torch_vec_env(env_id, n, seed=1)
    ref = assert_spaces_like_gymnasium(env, env_id, n)

    obs, info = env.reset(seed=3)
    obs_dim = ref.observation_space.shape[0]
    assert obs.shape == (n, obs_dim) and obs.dtype == torch.float32
    assert isinstance(info, dict)
    assert env.observation_space.contains(obs.numpy())

    # numpy actions straight from the batched space are accepted.
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (n, obs_dim) and obs.dtype == torch.float32
    assert reward.shape == (n,) and reward.dtype == torch.float32
    assert terminated.shape == (n,) and terminated.dtype == torch.bool
    assert truncated.shape == (n,) and truncated.dtype == torch.bool
    assert info["final_obs"].shape == (n, obs_dim)
    assert info["_final_obs"].shape == (n,) and info["_final_obs"].dtype == torch.bool


@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_reset_distribution_and_seeding(env_id: str) -> None:
    env = make_torch_vec_env(env_id, 4096, seed=0)
    env.reset(seed=5)
    s = env.state
    if env_id == "CartPole-v1":
        lo, hi = torch.full((4,), -0.05), torch.full((4,), 0.05)
    elif env_id == "Acrobot-v1":
        lo, hi = torch.full((4,), -0.1), torch.full((4,), 0.1)
    elif env_id.startswith("MountainCar"):
        lo, hi = torch.tensor([-0.6, 0.0]), torch.tensor([-0.4, 0.0])
    else:
        lo, hi = torch.tensor([-np.pi, -1.0]), torch.tensor([np.pi, 1.0])
    lo, hi = lo.to(s.dtype), hi.to(s.dtype)
    assert (s >= lo).all() and (s <= hi).all()
    # Spread over (nearly) the whole range, not a constant.
    torch.testing.assert_close(s.amin(0), lo, atol=0.01 * float((hi - lo).max()), rtol=0)
    torch.testing.assert_close(s.amax(0), hi, atol=0.01 * float((hi - lo).max()), rtol=0)

    again = make_torch_vec_env(env_id, 4096, seed=99)
    torch.testing.assert_close(again.reset(seed=5)[0], env.reset(seed=5)[0])
    assert not torch.equal(again.reset(seed=6)[0], env.reset(seed=5)[0])


def test_reset_options_bounds() -> None:
    env = make_torch_vec_env("CartPole-v1", 256, seed=0)
    obs, _ = env.reset(options={"low": -0.2, "high": -0.1})
    assert (obs >= -0.2).all() and (obs <= -0.1).all()
    env = make_torch_vec_env("Pendulum-v1", 256, seed=0)
    env.reset(options={"x_init": 0.5, "y_init": 0.25})
    assert (env.state.abs() <= torch.tensor([0.5, 0.25], dtype=env.state.dtype)).all()


def test_same_step_autoreset_and_final_obs() -> None:
    n = 8
    env = make_torch_vec_env("CartPole-v1", n, seed=0)
    env.reset()
    state = torch.zeros(n, 4)
    state[0] = torch.tensor([2.39, 1.0, 0.0, 0.0])  # leaves the track this step
    state[3] = torch.tensor([0.0, 0.0, -0.2, -1.0])  # pole falls this step
    env.state = state
    for _ in range(5):  # build up some episode length first
        env.elapsed_steps += 1
    obs, reward, terminated, truncated, info = env.step(torch.ones(n, dtype=torch.int64))

    ended = torch.zeros(n, dtype=torch.bool)
    ended[[0, 3]] = True
    assert torch.equal(terminated, ended)
    assert torch.equal(info["_final_obs"], ended)
    assert not truncated.any()
    assert torch.equal(reward, torch.ones(n))
    # Final observations are the true terminal ones ...
    assert info["final_obs"][0, 0] > 2.4
    assert info["final_obs"][3, 2] < -0.2095
    # ... while obs already starts the next episode for the ended envs.
    assert (obs[ended].abs() <= 0.05).all()
    torch.testing.assert_close(obs, env.state.float())
    torch.testing.assert_close(obs[~ended], info["final_obs"][~ended])
    assert env.elapsed_steps.tolist() == [0, 6, 6, 0, 6, 6, 6, 6]

    # The reset envs step on from their new state like any other.
    ref = gym.make("CartPole-v1").unwrapped
    ref.reset(seed=0)
    ref.state = env.state[0].double().numpy().copy()
    ref_obs, *_ = ref.step(0)
    obs, *_ = env.step(torch.zeros(n, dtype=torch.int64))
    np.testing.assert_allclose(obs[0].numpy(), ref_obs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_time_limit_truncation(env_id: str) -> None:
    n = 4
    limit = gym.spec(env_id).max_episode_steps
    env = make_torch_vec_env(env_id, n, seed=0)
    assert env.max_episode_steps == limit
    env.reset()
    safe = env.state.clone()
    # Envs 2,3 start one step later, so they truncate one step after 0,1.
    env.elapsed_steps[2:] = -1
    zero_action = torch.as_tensor(np.zeros(env.action_space.shape, dtype=env.action_space.dtype))
    for t in range(1, limit + 2):
        env.state = safe  # keep every episode alive: only the TimeLimit can end it
        obs, _, terminated, truncated, info = env.step(zero_action)
        assert not terminated.any()
        expected = [t == limit] * 2 + [t == limit + 1] * 2
        assert truncated.tolist() == expected, t
        assert info["_final_obs"].tolist() == expected
        if t == limit:
            # Truncated envs restart from a fresh sample; the others carry on.
            assert not torch.equal(obs[:2], info["final_obs"][:2])
            assert torch.equal(obs[2:], info["final_obs"][2:])
    # After truncating, envs 0,1 have started over.
    assert env.elapsed_steps.tolist() == [1, 1, 0, 0]


def test_actions_with_grad_and_numpy_are_accepted() -> None:
    env = make_torch_vec_env("Pendulum-v1", 3, seed=0)
    env.reset()
    actions = torch.zeros(3, 1, requires_grad=True)
    obs, reward, *_ = env.step(actions * 2)
    assert not obs.requires_grad and not reward.requires_grad
    env.step(np.zeros((3, 1), dtype=np.float32))
    env.step(np.zeros(3, dtype=np.float32))  # (num_envs,) for a 1-d action is fine


def test_unknown_env_id() -> None:
    with pytest.raises(ValueError, match=r"CartPole-v1.*Pendulum-v1"):
        make_torch_vec_env("LunarLander-v3", 4)


@pytest.mark.parametrize("device", DEVICES)
def test_throughput_smoke(device: str) -> None:
    n = 4096
    env = make_torch_vec_env("CartPole-v1", n, device=device, seed=0)
    obs, _ = env.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    episodes = 0
    for _ in range(100):
        actions = torch.randint(0, 2, (n,), device=device, generator=gen)
        obs, _, terminated, truncated, _ = env.step(actions)
        episodes += int((terminated | truncated).sum())
    assert obs.shape == (n, 4) and obs.device.type == device
    assert torch.isfinite(obs).all()
    # Random CartPole episodes last ~20 steps, so most envs have reset by now.
    assert episodes > n
