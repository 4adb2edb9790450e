"""Record a trained policy's episodes to mp4 with gymnasium's RecordVideo (moviepy is an extra)."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from ppox.errors import EnvError, PPOXError
from ppox.rl.atari import GAME_INFO_KEY, is_atari
from ppox.rl.envs import check_env_id, make_single_env


def record_video(model, video_dir: str | Path, episodes: int = 3, deterministic: bool = True,
                 seed: int | None = None, returns: list[float] | None = None) -> list[Path]:
    """Play `episodes` episodes of `model` (normalisation frozen) and return the mp4 paths; `returns`, if
    given, gets each episode's undiscounted return (Atari: whole games, raw rewards)."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise PPOXError("recording video needs moviepy: pip install 'ppox[video]'") from None
    video_dir = Path(video_dir)
    # RecordVideo creates the folder itself and warns "Overwriting existing videos" whenever it already
    # exists, so creating it here made that warning appear for every new folder
    before = set(video_dir.glob("*.mp4"))
    # rgb_array frames need no window: SDL's dummy driver stops pygame probing for a display, which
    # printed "XDG_RUNTIME_DIR is invalid or not set" on headless machines
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

    def recorder(env: gym.Env) -> gym.Env:
        if env.render_mode != "rgb_array":
            raise EnvError("video recording needs an env created with render_mode='rgb_array'")
        return gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda _: True,
                                       name_prefix=(model.config.env_id or "env").replace("/", "_"),
                                       disable_logger=True)

    # Atari: one video per whole game, the recorder below the life episodes (ppox.rl.atari)
    whole_games = model.env_fn is None and is_atari(check_env_id(model.config.env_id))
    try:
        if whole_games:
            env = make_single_env(model.config.env_id, render_mode="rgb_array", game_wrapper=recorder)
        else:
            env = recorder(model.env_fn() if model.env_fn is not None
                           else gym.make(check_env_id(model.config.env_id), render_mode="rgb_array"))
    except gym.error.DependencyNotInstalled as exc:
        raise EnvError(f"rendering {model.config.env_id} needs: {exc}") from None
    base_seed = (model.config.seed if seed is None else seed) + 100_000
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=base_seed + episode)
            total = 0.0
            while True:
                action = model.predict(obs, deterministic=deterministic)
                obs, reward, terminated, truncated, info = env.step(np.asarray(action))
                total += float(reward)
                if not whole_games and (terminated or truncated):
                    break
                if whole_games and GAME_INFO_KEY in info:  # the game is over, not only a life
                    total = float(info[GAME_INFO_KEY]["r"])  # the raw score, not the clipped rewards
                    break
                if terminated or truncated:
                    obs, _ = env.reset()  # a life lost: the same game goes on
            if returns is not None:
                returns.append(total)
    finally:
        env.close()
    return sorted(set(video_dir.glob("*.mp4")) - before)
