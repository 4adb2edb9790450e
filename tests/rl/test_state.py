"""The public state API of PPO, VecEnv and the normalisers: what checkpoints are made of."""

import numpy as np
import torch

from ppox.rl.envs import VecEnv
from ppox.rl.normalize import ObsNormalizer, RewardScaler
from ppox.rl.ppo import PPO


def test_normalisers_round_trip_their_statistics():
    norm = ObsNormalizer(3)
    norm(torch.randn(8, 3), update=True)
    copy = ObsNormalizer(3)
    copy.load_state_dict(norm.state_dict())
    x = torch.randn(4, 3)
    assert torch.equal(copy(x, update=False), norm(x, update=False))
    scaler = RewardScaler(2, 0.99)
    scaler(torch.ones(2), torch.zeros(2, dtype=torch.bool))
    other = RewardScaler(2, 0.99)
    other.load_state_dict(scaler.state_dict())
    restored, original = other.state_dict(), scaler.state_dict()
    assert all(torch.equal(restored[k], original[k]) for k in original)
    state = norm.state_dict()
    norm(torch.randn(8, 3), update=True)
    assert not torch.equal(state["mean"], norm.state_dict()["mean"])  # a copy, not the live tensor


def test_vec_env_state_holds_restarts_and_episodes_in_progress():
    envs = VecEnv("CartPole-v1", 2, 0, "cpu", backend="numpy")
    envs.reset()
    envs.step(np.zeros(2, dtype=np.int64))
    state = envs.state_dict()
    assert state["restarts"] == 0 and state["episode_length"].tolist() == [1, 1]
    envs.load_state_dict({"restarts": 3, "episode_return": None, "episode_length": None})
    assert envs.state_dict()["restarts"] == 3 and envs.state_dict()["episode_length"].tolist() == [1, 1]
    envs.close()


def test_ppo_state_dict_round_trips(tiny, tmp_path):
    a = PPO(tiny(total_timesteps=64, run_dir=str(tmp_path / "a"), norm_obs=True, norm_reward=True)).learn()
    state = a.state_dict()
    assert set(a.state_dict(rollout_only=True)) < set(state)
    b = PPO(tiny(total_timesteps=64, run_dir=str(tmp_path / "b"), norm_obs=True, norm_reward=True))
    b.load_state_dict(state)  # restores the RNG states too: take b's state before drawing anything
    again = b.state_dict()
    assert (again["iteration"], again["global_step"], again["recent_returns"]) == (
        state["iteration"], state["global_step"], state["recent_returns"])
    for key in ("agent", "obs_norm", "reward_scaler"):
        for name, value in state[key].items():
            assert torch.equal(value, again[key][name]), (key, name)
    assert torch.equal(again["next_obs"], state["next_obs"])
    assert torch.equal(again["rng"]["torch"], state["rng"]["torch"])
    assert again["rng"]["policy"] == state["rng"]["policy"]
    assert again["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()
    a.close()
    b.close()
