"""Atari: ids, the nine preprocessing details, whole-game accounting, the pipeline end to end (docs/pixels.md)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from ppox.rl.config import preset_config
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
