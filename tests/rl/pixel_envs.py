"""Small image environments for the pixel tests; importing this module registers them (the
`tests.rl.pixel_envs:PixelPick-v0` form of gymnasium ids imports it)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SIZE = 12


class PixelPick(gym.Env):
    """A bright 2x2 block appears in the left or the right half of a 12x12 uint8 image (HWC, one
    channel); action 0 / 1 names the half: reward 1 when right, 0 when wrong. 16 steps per episode,
    so random play returns 8 and perfect play 16. `dict_obs`: {"image": the image, "noise": Box(2)}."""

    def __init__(self, dict_obs: bool = False) -> None:
        image = spaces.Box(0, 255, (SIZE, SIZE, 1), np.uint8)
        self.dict_obs = dict_obs
        self.observation_space = (spaces.Dict({"image": image, "noise": spaces.Box(-1, 1, (2,), np.float32)})
                                  if dict_obs else image)
        self.action_space = spaces.Discrete(2)
        self.side = 0

    def _obs(self):
        self.side = int(self.np_random.integers(2))
        image = np.zeros((SIZE, SIZE, 1), np.uint8)
        row = int(self.np_random.integers(SIZE - 1))
        col = int(self.np_random.integers(SIZE // 2 - 1)) + self.side * SIZE // 2
        image[row : row + 2, col : col + 2] = 255
        if not self.dict_obs:
            return image
        return {"image": image, "noise": self.np_random.uniform(-1, 1, 2).astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.side)
        return self._obs(), reward, False, False, {}


gym.register("PixelPick-v0", entry_point=PixelPick, max_episode_steps=16)
gym.register("PixelPickDict-v0", entry_point=PixelPick, max_episode_steps=16, kwargs={"dict_obs": True})
