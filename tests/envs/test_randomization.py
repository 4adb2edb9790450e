"""Domain randomisation of the batched twins (ppox.envs.randomization): per-env sampling at reset,
reproducible from the seed, the physics reading the sampled parameters, the Dict observation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ppox.envs import Randomization, make_numpy_vec_env, make_torch_vec_env

MAKERS = {"numpy": make_numpy_vec_env, "torch": make_torch_vec_env}


def arr(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.mark.parametrize("backend", MAKERS)
def test_parameters_are_per_env_and_reproducible_from_the_seed(backend: str) -> None:
    make = MAKERS[backend]
    a = make("ppox/CartPoleRandomized-v0", 6, seed=3)
    b = make("ppox/CartPoleRandomized-v0", 6, seed=3)
    c = make("ppox/CartPoleRandomized-v0", 6, seed=4)
    pa, pb, pc = (arr(e.reset(seed=s)[0]["privileged"]) for e, s in ((a, 3), (b, 3), (c, 4)))
    np.testing.assert_array_equal(pa, pb)  # same seed, same parameters
    assert not np.allclose(pa, pc)  # another seed, others
    assert len({tuple(row) for row in pa.round(6)}) == 6  # every env its own draw
    assert pa.shape == (6, 6) and (np.abs(pa) <= 1 + 1e-6).all()  # normalised to [-1, 1]
    names = a.randomization.names()
    sign = pa[:, names.index("actuator_sign")]
    assert set(np.round(sign, 6)) <= {-1.0, 1.0}


@pytest.mark.parametrize("backend", MAKERS)
def test_an_env_draws_new_parameters_at_its_own_reset_only(backend: str) -> None:
    env = MAKERS[backend]("ppox/CartPoleRandomized-v0", 8, seed=0)
    obs, _ = env.reset(seed=0)
    before = arr(obs["privileged"])
    for _ in range(200):
        obs, _, terminated, truncated, _ = env.step(np.ones(8, dtype=np.int64))
        done = arr(terminated | truncated)
        after = arr(obs["privileged"])
        if done.any():
            assert not np.allclose(after[done], before[done])  # the envs that reset: new parameters
            np.testing.assert_array_equal(after[~done], before[~done])  # the others: unchanged
            return
        np.testing.assert_array_equal(after, before)
    pytest.fail("no episode ended")


@pytest.mark.parametrize("backend", MAKERS)
def test_fixed_parameters_at_the_defaults_give_the_unrandomised_physics(backend: str) -> None:
    """The physics reads per-env parameters through the same code: defaults as ranges change nothing."""
    fixed = Randomization(uniform={"length": (0.5, 0.5), "masspole": (0.1, 0.1), "gravity": (9.8, 9.8)},
                          choice={"actuator_sign": (1.0,)})
    plain = MAKERS[backend]("CartPole-v1", 5, seed=1)
    rand = MAKERS[backend]("CartPole-v1", 5, seed=1, randomization=fixed)
    rng = np.random.default_rng(0)
    states = rng.uniform(-0.05, 0.05, size=(5, 4))
    plain.reset(seed=1)
    rand.reset(seed=1)
    plain.state, rand.state = states, states
    actions = np.array([0, 1, 1, 0, 1])
    o1 = arr(plain.step(actions)[0])
    o2 = arr(rand.step(actions)[0]["obs"])
    np.testing.assert_allclose(o1, o2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", MAKERS)
def test_actuator_sign_reverses_the_push(backend: str) -> None:
    results = []
    for sign in (1.0, -1.0):
        env = MAKERS[backend]("CartPole-v1", 1, seed=0, randomization=Randomization(choice={"actuator_sign": (sign,)}))
        env.reset(seed=0)
        env.state = np.zeros((1, 4))
        results.append(arr(env.step(np.array([1]))[0]["obs"])[0, 1])  # x_dot after pushing right
    assert results[0] > 0 > results[1]
    assert results[0] == pytest.approx(-results[1], rel=1e-5)


@pytest.mark.parametrize("backend", MAKERS)
def test_action_delay_applies_the_action_of_delay_steps_before(backend: str) -> None:
    delayed = Randomization(choice={"action_delay": (1.0,)})
    env = MAKERS[backend]("CartPole-v1", 1, seed=0, randomization=delayed)
    env.reset(seed=0)
    env.state = np.zeros((1, 4))
    x_dot = [arr(env.step(np.array([a]))[0]["obs"])[0, 1] for a in (1, 0, 0)]
    # step 1: the episode's first action (1) fills the queue; step 2 applies the action of step 1 (right)
    # again; step 3 the action of step 2 (left)
    assert x_dot[0] > 0 and x_dot[1] > x_dot[0] and x_dot[2] < x_dot[1]


@pytest.mark.parametrize("backend", MAKERS)
def test_observation_noise_and_pendulum_gain(backend: str) -> None:
    env = MAKERS[backend]("ppox/PendulumRandomized-v0", 4, seed=0)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"obs", "privileged"} and arr(obs["obs"]).shape == (4, 3)
    # noise: cos^2 + sin^2 of a noisy observation is not exactly 1
    o = arr(obs["obs"]).astype(np.float64)
    assert not np.allclose(o[:, 0] ** 2 + o[:, 1] ** 2, 1.0, atol=1e-7)
    gains = []
    for gain in (0.5, 1.5):
        fixed = Randomization(uniform={"actuator_gain": (gain, gain)})
        e = MAKERS[backend]("Pendulum-v1", 1, seed=0, randomization=fixed)
        e.reset(seed=0)
        e.state = np.zeros((1, 2))
        gains.append(arr(e.step(np.array([[1.0]], dtype=np.float32))[0]["obs"])[0, 2])
    assert gains[1] == pytest.approx(3 * gains[0], rel=1e-5)  # theta_dot grows with the gain


def test_blind_variant_and_gymnasium_registration() -> None:
    blind = make_numpy_vec_env("ppox/CartPoleRandomizedBlind-v0", 3, seed=0)
    obs, _ = blind.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.shape == (3, 4)
    full = make_numpy_vec_env("ppox/CartPoleRandomized-v0", 3, seed=0)
    np.testing.assert_array_equal(full.reset(seed=0)[0]["obs"], obs)  # the same task, same draws
    env = gym.make("ppox/CartPoleRandomized-v0")
    first, _ = env.reset(seed=5)
    assert env.observation_space.contains(first)
    for _ in range(600):
        o, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            assert set(o) == {"obs", "privileged"}
            break


def test_bad_randomisation_is_refused() -> None:
    with pytest.raises(ValueError, match="no randomisable parameter wheel"):
        make_numpy_vec_env("CartPole-v1", 2, randomization=Randomization(uniform={"wheel": (0, 1)}))
    with pytest.raises(ValueError, match="low <= high"):
        Randomization(uniform={"length": (1.0, 0.5)})
    with pytest.raises(ValueError, match="whole steps"):
        Randomization(choice={"action_delay": (0.5,)})
    with pytest.raises(ValueError, match="No torch implementation"):
        make_torch_vec_env("ppox/Nothing-v0", 2)
