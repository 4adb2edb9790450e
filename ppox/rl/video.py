"""Record a trained policy's episodes to mp4 with gymnasium's RecordVideo (moviepy is an extra)."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from ppox.errors import EnvError, PPOXError


def record_video(model, video_dir: str | Path, episodes: int = 3, deterministic: bool = True,
                 seed: int | None = None) -> list[Path]:
    """Play `episodes` episodes of `model` (normalisation frozen) and return the mp4 paths."""
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
    try:
        env = model.env_fn() if model.env_fn is not None else gym.make(model.config.env_id, render_mode="rgb_array")
    except gym.error.DependencyNotInstalled as exc:
        raise EnvError(f"rendering {model.config.env_id} needs: {exc}") from None
    if env.render_mode != "rgb_array":
        raise EnvError("video recording needs an env created with render_mode='rgb_array'")
    env = gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda _: True,
                                   name_prefix=(model.config.env_id or "env").replace("/", "_"),
                                   disable_logger=True)
    base_seed = (model.config.seed if seed is None else seed) + 100_000
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=base_seed + episode)
            done = False
            while not done:
                action = model.predict(obs, deterministic=deterministic)
                obs, _, terminated, truncated, _ = env.step(np.asarray(action))
                done = terminated or truncated
    finally:
        env.close()
    return sorted(set(video_dir.glob("*.mp4")) - before)
