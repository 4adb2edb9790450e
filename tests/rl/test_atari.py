"""Atari: ids, the nine preprocessing details, whole-game accounting, the pipeline end to end (docs/pixels.md)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from ppox.errors import ConfigError
from ppox.rl.config import PPOConfig, preset_config
from ppox.rl.envs import VecEnv, make_single_env
from ppox.rl.ppo import PPO


def test_ale_ids_get_the_atari_preset_and_preprocessing():
    config = preset_config("BreakoutNoFrameskip-v4")
    assert (config.preset, config.num_envs, config.num_steps, config.clip_coef, config.shared_trunk) == (
        "atari", 8, 128, 0.1, True)
    env = make_single_env("ALE/Breakout-v5")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8  # 4 stacked 84x84 grayscale frames
    names = []
    e = env
    while hasattr(e, "env"):
        names.append(type(e).__name__)
        e = e.env
    assert names[:6] == ["FrameStackObservation", "TransformReward", "FireReset", "EpisodicLife",
                         "RecordEpisodeStatistics", "AtariPreprocessing"]
    env.close()


def test_metrics_count_whole_games_not_lives():
    envs = VecEnv("BreakoutNoFrameskip-v4", 2, 0, torch.device("cpu"))
    envs.reset()
    generator = torch.Generator().manual_seed(0)
    life_ends, games, rewards = 0, [], set()
    for _ in range(1500):
        result = envs.step(torch.randint(0, 4, (2,), generator=generator))
        life_ends += int(result.terminated.sum())
        games += result.finished_envs
        rewards.update(result.reward.tolist())
    envs.close()
    assert len(games) >= 2
    # Breakout has 5 lives: every finished game ended 5 agent episodes; the games in progress up to 4 more each
    assert 5 * len(games) <= life_ends <= 5 * len(games) + 8
    assert rewards <= {-1.0, 0.0, 1.0}  # sign-clipped for the agent


def test_without_the_extra_one_line_names_it():
    code = ("import sys; sys.modules['ale_py'] = None\n"
            "from ppox.rl.envs import check_env_id\n"
            "try:\n    check_env_id('ALE/Breakout-v5')\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "EnvError" in out and "pip install 'ppox[atari]'" in out


@pytest.mark.slow
def test_atari_pipeline_end_to_end(tmp_path):
    """Breakout with the atari preset on 2,048 steps: train, save, load, evaluate whole games, record video."""
    with PPO("ALE/Breakout-v5", total_timesteps=2048, run_dir=tmp_path / "run", progress=False,
             tensorboard=False, eval_episodes=1) as model:
        model.learn()
        assert model.summary["eval_episodes"] == 1
    loaded = PPO.load(tmp_path / "run")
    assert loaded.evaluate(episodes=1)["episodes"] == 1
    pytest.importorskip("moviepy")
    from ppox.rl.video import record_video

    returns: list[float] = []
    videos = record_video(loaded, tmp_path / "video", episodes=1, returns=returns)
    assert len(videos) == 1 and len(returns) == 1  # one file per whole game


def _stack_semantics(envs: VecEnv, steps: int) -> tuple[set, list[int]]:
    """Step random actions; check each observation is a uint8 (N, 4, 84, 84) stack whose frame k+1 is the next
    step's frame k (the last frame the newest) outside episode ends; return the rewards seen and the games."""
    obs = envs.reset()
    assert obs.dtype == torch.uint8 and obs.shape == (2, 4, 84, 84)
    assert all(torch.equal(obs[i, k], obs[i, 3]) for i in range(2) for k in range(3))  # a reset gives a stack
    generator = torch.Generator().manual_seed(0)
    rewards, games = set(), []
    for _ in range(steps):
        result = envs.step(torch.randint(0, 4, (2,), generator=generator))
        assert result.obs.dtype == torch.uint8 and result.obs.shape == (2, 4, 84, 84)
        for i in range(2):
            if not (result.terminated[i] or result.truncated[i]):
                assert torch.equal(result.obs[i, :3], obs[i, 1:])  # shifted by one: the newest frame last
        rewards.update(result.reward.tolist())
        games += result.finished_returns
        obs = result.obs
    envs.close()
    return rewards, games


def test_ale_vector_backend_gives_the_same_observation_semantics():
    """env_backend ale (ALE's C++ vector env) and the gymnasium wrappers: uint8 (N, 4, 84, 84) stacks, newest
    frame last, pixel values of the same grayscale screen, a reset repeats its first frame, rewards sign-clipped,
    whole games (5 lives of Breakout) reported with raw scores."""
    ale = VecEnv("BreakoutNoFrameskip-v4", 2, 0, torch.device("cpu"), backend="ale")
    wrapped = VecEnv("BreakoutNoFrameskip-v4", 2, 0, torch.device("cpu"))
    first_ale, first_wrapped = ale.reset(), wrapped.reset()
    # the same game screen before play: the same grayscale values up to resizing differences
    assert (first_ale.float() - first_wrapped.float()).abs().mean() < 2.0
    assert ale.single_observation_space == wrapped.single_observation_space
    rewards_ale, games_ale = _stack_semantics(ale, 1500)
    rewards_wrapped, _ = _stack_semantics(wrapped, 300)
    assert rewards_ale <= {-1.0, 0.0, 1.0} and rewards_wrapped <= {-1.0, 0.0, 1.0}
    assert len(games_ale) >= 1 and all(r >= 0 and r == int(r) for r in games_ale)  # whole games, raw scores


def test_ale_backend_is_for_ale_ids_only():
    from ppox.errors import EnvError

    with pytest.raises(EnvError, match="ALE games only"):
        VecEnv("CartPole-v1", 2, 0, torch.device("cpu"), backend="ale")


def test_ppo_on_the_ale_backend_end_to_end(tmp_path):
    """A short PPO run (2 x 128 steps, a small update) with env_backend ale: it trains, counts whole games."""
    with PPO("BreakoutNoFrameskip-v4", env_backend="ale", num_envs=2, num_steps=128, total_timesteps=512,
             run_dir=tmp_path / "run", progress=False, tensorboard=False, eval_episodes=0) as model:
        model.learn()
        assert model.summary is not None


@pytest.mark.parametrize("extra", [{"vectorization": "async"}, {"env_step_timeout": 5.0}])
def test_ale_backend_refuses_worker_process_options(extra):
    """ALE's vector env has its own threads: an option it would silently ignore is refused in one line."""
    with pytest.raises(ConfigError, match="env_backend ale"):
        PPOConfig(env_id="ALE/Breakout-v5", env_backend="ale", **extra)
