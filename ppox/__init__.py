"""ppox: Proximal Policy Optimization for gymnasium agents and language models, from one core."""

__version__ = "0.1.0"

from ppox.rl.config import PPOConfig, preset_config
from ppox.rl.ppo import PPO

__all__ = ["PPO", "PPOConfig", "__version__", "preset_config"]
