"""Batched numpy twins of the classic-control envs against gymnasium's reference implementations."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from ppox.envs import NUMPY_ENV_IDS, make_numpy_vec_env
from tests.envs.helpers import ATOL, assert_spaces_like_gymnasium, gymnasium_step, random_actions, random_step_inputs


def make(env_id: str, n: int, seed: int | None, vectorised: bool):
    env = make_numpy_vec_env(env_id, n, seed=seed)
    if vectorised:  # force the numpy-array path (else used above scalar_max_envs envs)
        env.scalar_max_envs = 0
    elif env.scalar_max_envs:
        env.scalar_max_envs = n
    return env


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "scalar"])
@pytest.mark.parametrize("env_id", NUMPY_ENV_IDS)
def test_one_step_matches_gymnasium(env_id: str, vectorised: bool) -> None:
    """Set the same states, step both, compare next obs / reward / termination / state."""
    n = 300
    env = make(env_id, n, 0, vectorised)
    env.reset()
    states, actions = random_step_inputs(env_id, env, n)
    env.state = states
    obs, reward, terminated, truncated, info = env.step(actions)

    ref = gymnasium_step(env_id, states, actions)
    final = info["final_obs"] if terminated.any() else obs
    assert obs.dtype == np.float32 and final.shape == (n, env.single_observation_space.shape[0])
    np.testing.assert_allclose(final, ref["obs"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(reward, ref["reward"], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(terminated, ref["terminated"])
    assert not truncated.any()
    alive = ~terminated
    np.testing.assert_array_equal(obs[alive], final[alive])
    np.testing.assert_allclose(env.state[alive], ref["state"][alive], rtol=0, atol=ATOL)
    if terminated.any():
        assert info["_final_obs"].dtype == bool and (info["_final_obs"] == terminated).all()


@pytest.mark.parametrize("env_id", NUMPY_ENV_IDS)
def test_trajectories_match_sync_vector_env(env_id: str) -> None:
    """Same seed, same actions: the same episodes as gymnasium's SyncVectorEnv (resets, time
    limits and same-step autoreset included), at 4 envs (the scalar path where a class has one)."""
    n, steps = 4, 1200
    rng = np.random.default_rng(7)
    ref = gym.make_vec(env_id, n, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    env = make_numpy_vec_env(env_id, n)
    o_ref, _ = ref.reset(seed=42)
    o, _ = env.reset(seed=42)
    np.testing.assert_array_equal(o, o_ref)
    ended = truncations = 0
    for _ in range(steps):
        a = random_actions(env, n, rng)
        if isinstance(env.single_action_space, gym.spaces.Box):
            a = np.clip(a, env.single_action_space.low, env.single_action_space.high)
        o_ref, r_ref, te_ref, tr_ref, i_ref = ref.step(a)
        o, r, te, tr, info = env.step(a)
        np.testing.assert_allclose(o, o_ref, rtol=0, atol=ATOL)
        np.testing.assert_allclose(r, r_ref, rtol=0, atol=ATOL)
        np.testing.assert_array_equal(te, te_ref)
        np.testing.assert_array_equal(tr, tr_ref)
        done = te | tr
        if done.any():
            ended += int(done.sum())
            truncations += int(tr.sum())
            np.testing.assert_array_equal(info["_final_obs"], done)
            np.testing.assert_allclose(info["final_obs"][done], np.stack(i_ref["final_obs"][done]), rtol=0, atol=ATOL)
        else:
            assert "final_obs" not in info
    assert ended > 0
    if env_id in ("MountainCar-v0", "Pendulum-v1"):
        assert truncations > 0  # the time limit is exercised


@pytest.mark.parametrize("env_id", NUMPY_ENV_IDS)
def test_spaces_seeding_and_pickle(env_id: str) -> None:
    n = 5
    env = make_numpy_vec_env(env_id, n, seed=1)
    ref = assert_spaces_like_gymnasium(env, env_id, n)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (n, ref.observation_space.shape[0]) and obs.dtype == np.float32 and obs.flags.c_contiguous
    assert env.observation_space.contains(obs)
    # reset states follow gymnasium's: env i seeded with seed + i
    for i in range(n):
        o, _ = ref.reset(seed=3 + i)
        np.testing.assert_array_equal(obs[i], o)
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    # C order like gymnasium's vector envs: a checkpoint restores observations in C order, and a matmul on a
    # transposed operand can differ in the last bit, so a resumed run would drift from the uninterrupted one
    assert obs.flags.c_contiguous
    assert reward.shape == (n,) and reward.dtype == np.float64
    assert terminated.dtype == bool and truncated.dtype == bool
    # pickles mid-episode (checkpoints capture it), and the copy continues identically
    copy = pickle.loads(pickle.dumps(env))
    actions = env.action_space.sample()
    for _ in range(50):
        a, b = env.step(actions), copy.step(actions)
        np.testing.assert_array_equal(a[0], b[0])


def test_scalar_and_vectorised_paths_agree_over_episodes() -> None:
    rng = np.random.default_rng(3)
    for env_id in ("CartPole-v1", "Acrobot-v1"):
        a, b = make(env_id, 8, 5, vectorised=False), make(env_id, 8, 5, vectorised=True)
        a.reset(seed=5)
        b.reset(seed=5)
        for _ in range(300):
            act = rng.integers(0, a.single_action_space.n, size=8)
            oa, _, ta, _, _ = a.step(act)
            ob, _, tb, _, _ = b.step(act)
            np.testing.assert_allclose(oa, ob, rtol=0, atol=ATOL)
            np.testing.assert_array_equal(ta, tb)
            b.state = a.state  # rounding differences must not grow over an episode


def test_unknown_id() -> None:
    with pytest.raises(ValueError, match="numpy"):
        make_numpy_vec_env("Pong-v5", 2)


@pytest.mark.parametrize("env_id", NUMPY_ENV_IDS)
def test_peeked_resets_are_the_states_later_resets_draw(env_id):
    """peek_resets leaves every generator where it was; after consume_resets(used) env i's generator is where `used[i]`
    resets would leave it, and those resets drew the peeked states (what ppox.rl.compiled_rollout relies on)."""
    env = make_numpy_vec_env(env_id, 3, seed=5)
    before = [rng.bit_generator.state for rng in env._rngs]
    peeked = env.peek_resets(4)
    assert peeked.shape == (3, 4, env.state_dim)
    assert [rng.bit_generator.state for rng in env._rngs] == before
    twin = copy.deepcopy(env)
    drawn = [[twin._draw(i) for _ in range(4)] for i in range(3)]
    np.testing.assert_array_equal(peeked, np.array(drawn, dtype=np.float64))
    env.consume_resets(np.array([0, 2, 3]))
    again = make_numpy_vec_env(env_id, 3, seed=5)
    for i, n in enumerate((0, 2, 3)):
        for _ in range(n):
            again._draw(i)
    assert [rng.bit_generator.state for rng in env._rngs] == [rng.bit_generator.state for rng in again._rngs]
