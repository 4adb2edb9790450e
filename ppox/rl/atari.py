"""Pixel suites: Atari (ALE, `pip install 'ppox[atari]'`) with the 37 implementation details' Atari
preprocessing, and MinAtar (10x10 binary planes, fast on a CPU).

The Atari details (Huang et al. 2022, "The 37 Implementation Details of PPO", details a1-a9), applied to
every env ppox makes from an ALE id (`ALE/Breakout-v5`, `BreakoutNoFrameskip-v4`):

    gym.make(id, frameskip=1)          ALE's own frame skip off: AtariPreprocessing skips
    AtariPreprocessing                 a1 no-op reset (up to 30), a2 max-and-skip (4; max of the last two
                                       frames), a5 84x84 grayscale, kept uint8 (a9: scaled in the network)
    RecordEpisodeStatistics            whole games, raw rewards: info["episode"] at the game's end
    EpisodicLife                       a3 a life lost ends the training episode, not the game
    FireReset                          a4 FIRE after each reset, in games that need it
    sign reward clipping               a6
    FrameStackObservation(4)           a7 (4, 84, 84) uint8; a8 the Nature CNN is ppox.rl.policy.CNNEncoder

Metrics and evaluation count whole games: ppox.rl.envs.VecEnv reads info["episode"] (`whole_games`), not
the life-loss terminations the agent trains on. Sticky actions stay as the id defines them (v5: 0.25, the
Machado et al. protocol; v4 NoFrameskip: none, CleanRL's ppo_atari.py).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from ppox.errors import EnvError

ATARI_EXTRA = "pip install 'ppox[atari]'"
_ATARI_ID = re.compile(r"(ALE/)?[A-Z][A-Za-z]*(NoFrameskip|Deterministic)?-v[045]")
# the info key whose presence marks a finished whole game (gymnasium's RecordEpisodeStatistics)
GAME_INFO_KEY = "episode"


def register_suite(env_id: str) -> None:
    """Register the envs of the pixel suite `env_id` belongs to, if it is one that is not registered yet:
    ALE ids (`import ale_py`) and MinAtar ids (`MinAtar/Breakout-v1`). Unknown ids are left alone."""
    if env_id in gym.registry:
        return
    if _ATARI_ID.fullmatch(env_id):
        try:
            import ale_py
        except ImportError:
            if env_id.startswith("ALE/") or "NoFrameskip" in env_id:
                raise EnvError(f"{env_id} is an Atari game: it needs the atari extra ({ATARI_EXTRA})") from None
            return
        gym.register_envs(ale_py)
    elif env_id.startswith("MinAtar/"):
        try:
            # minatar warns on the root logger that seaborn (only for rendering) is missing: not our concern
            level = logging.root.level
            logging.root.setLevel(logging.ERROR)
            try:
                import minatar.gym as minatar_gym
            finally:
                logging.root.setLevel(level)
        except ImportError:
            raise EnvError(f"{env_id} is a MinAtar game: it needs the minatar package (pip install minatar)") from None
        minatar_gym.register_envs()


def import_env_module(env_id: str) -> str:
    """Gymnasium's `module:EnvId` form: import `module` (the one the id names, nothing else), which
    registers its envs, and return `EnvId`."""
    module, _, name = env_id.partition(":")
    if not module or not name or not re.fullmatch(r"[A-Za-z_][\w.]*", module):
        raise EnvError(f"environment id {env_id!r} is not of the form module:EnvId")
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or the module's own code failing
        raise EnvError(f"could not import {module!r} for {env_id!r}: {type(exc).__name__}: {exc}") from None
    return name


def is_atari(env_id: str | None) -> bool:
    """Whether `env_id` is a registered ALE game (after `register_suite`)."""
    if env_id is None or env_id not in gym.registry:
        return False
    entry = gym.registry[env_id].entry_point
    return isinstance(entry, str) and entry.startswith("ale_py")


class EpisodicLife(gym.Wrapper):
    """Detail a3: losing a life ends the training episode (terminated) while the game goes on; `reset`
    after a lost life continues the same game with a no-op step, a full reset only after game over."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op ended the game
                obs, info = self.env.reset(**kwargs)
        self.game_over = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireReset(gym.Wrapper):
    """Detail a4: press FIRE (then action 2) after a reset, for games that wait for it (Breakout)."""

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def needs_fire(env: gym.Env) -> bool:
    meanings = env.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[1] == "FIRE"


def make_atari_env(env_id: str, render_mode: str | None = None,
                   game_wrapper: Callable[[gym.Env], gym.Env] | None = None, **kwargs: Any) -> gym.Env:
    """One ALE env with the nine Atari details (see the module docstring): observations (4, 84, 84) uint8.

    `game_wrapper` wraps the env at the level of whole games (above the statistics, below the life
    episodes): a video recorder there films one file per game.
    """
    env = gym.make(env_id, frameskip=1, render_mode=render_mode, **kwargs)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if game_wrapper is not None:
        env = game_wrapper(env)
    env = EpisodicLife(env)
    if needs_fire(env):
        env = FireReset(env)
    env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(r)))
    return gym.wrappers.FrameStackObservation(env, 4)


class AleVectorEnv(gym.vector.VectorEnv):
    """`num_envs` games of one ALE id in ALE's C++ vector env (`ale_py.vector_env.AtariVectorEnv`, threads,
    preprocessing in C++): env_backend "ale", opt-in (docs/pixels.md says what differs from the wrappers).

    ALE does no-op reset (30), max-and-skip (4), 84x84 grayscale and the 4-frame stack; `life_loss_info`
    ends the agent's episode (terminated) at a lost life while the game goes on (detail a3; ALE's own
    `episodic_life` would restart the whole game). This class clips the rewards (a6) and reports whole
    games, raw scores, as `RecordEpisodeStatistics` does: info["final_info"]["episode"] with its mask
    "_episode", in gymnasium's same-step autoreset format, which ppox.rl.envs.VecEnv reads. Observations:
    (num_envs, 4, 84, 84) uint8, the last frame the newest; a new game's stack repeats its first frame, as
    `FrameStackObservation` does (ALE pads with zeros).
    """

    def __init__(self, env_id: str, num_envs: int, num_threads: int = 0) -> None:
        from ale_py.vector_env import AtariVectorEnv

        spec = gym.registry[env_id].kwargs
        self.ale_env = AtariVectorEnv(
            spec["game"], num_envs, num_threads=num_threads, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            repeat_action_probability=spec.get("repeat_action_probability", 0.25),
            full_action_space=spec.get("full_action_space", False),
            max_num_frames_per_episode=spec.get("max_num_frames_per_episode", 108000),
            frameskip=4, maxpool=True, noop_max=30, img_height=84, img_width=84, grayscale=True, stack_num=4,
            episodic_life=False, life_loss_info=True, reward_clipping=False, use_fire_reset=True)
        self.num_envs = num_envs
        self.single_observation_space = self.ale_env.single_observation_space
        self.single_action_space = self.ale_env.single_action_space
        self.observation_space = self.ale_env.observation_space
        self.action_space = self.ale_env.action_space
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self._game_return = np.zeros(num_envs, dtype=np.float64)  # raw score of each game in progress
        self._game_length = np.zeros(num_envs, dtype=np.int64)  # agent steps of each game in progress
        self._frame = np.zeros(num_envs, dtype=np.int64)  # ALE's episode frame number: falls at a new game
        # ALE's stacks hold zeros before a game's first frame, for 3 steps: ppox shows that frame there instead
        self._first = np.zeros(self.single_observation_space.shape[1:], dtype=np.uint8)[None].repeat(num_envs, 0)
        self._since_start = np.full(num_envs, 3, dtype=np.int64)  # steps since the game's first frame, up to 3

    def _pad_stacks(self, obs: np.ndarray, new_games: np.ndarray) -> None:
        """Replace ALE's zero padding by the game's first frame (in place), as FrameStackObservation pads."""
        rows = np.flatnonzero(new_games)
        self._first[rows] = obs[rows, -1]
        self._since_start[rows] = 0
        obs[rows, :-1] = obs[rows, -1:]
        for i in np.flatnonzero(~new_games & (self._since_start < 3)):
            self._since_start[i] += 1
            obs[i, :3 - self._since_start[i]] = self._first[i]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.ale_env.reset(seed=seed, options=options)
        self._pad_stacks(obs, np.ones(self.num_envs, dtype=bool))
        self._game_return[:] = 0
        self._game_length[:] = 0
        self._frame[:] = info["episode_frame_number"]
        return obs, info

    def step(self, actions: np.ndarray):
        obs, reward, terminated, truncated, info = self.ale_env.step(np.asarray(actions, dtype=np.int64))
        self._game_return += reward
        self._game_length += 1
        frame = np.asarray(info["episode_frame_number"], dtype=np.int64)
        # a game ended where ALE started a new one (its frame count fell); a lost life only terminates
        game_over = (terminated | truncated) & (frame < self._frame)
        self._frame[:] = frame
        self._pad_stacks(obs, game_over)
        if game_over.any():
            info["final_info"] = {GAME_INFO_KEY: {"r": self._game_return.copy(), "l": self._game_length.copy()},
                                  f"_{GAME_INFO_KEY}": game_over}
            self._game_return[game_over] = 0
            self._game_length[game_over] = 0
        return obs, np.sign(reward).astype(np.float64), terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self.ale_env.close()




def suite_preset(env_id: str | None) -> str | None:
    """The preset of the pixel suite an id belongs to ("atari", "minatar"), by its name alone (nothing
    imported): the default preset of ids that have none of their own."""
    if env_id is None:
        return None
    name = env_id.partition(":")[2] or env_id
    if name.startswith("ALE/") or re.fullmatch(r"[A-Z][A-Za-z]*NoFrameskip-v4", name):
        return "atari"
    if name.startswith("MinAtar/"):
        return "minatar"
    return None


__all__ = [
    "ATARI_EXTRA",
    "GAME_INFO_KEY",
    "AleVectorEnv",
    "EpisodicLife",
    "FireReset",
    "import_env_module",
    "is_atari",
    "make_atari_env",
    "register_suite",
    "suite_preset",
]
