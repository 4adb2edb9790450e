"""ppox: Proximal Policy Optimization for gymnasium agents and language models, from one core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["PPO", "PPOConfig", "__version__", "distill", "preset_config", "train_seeds"]

if TYPE_CHECKING:
    from ppox.rl.config import PPOConfig, preset_config
    from ppox.rl.distill import distill
    from ppox.rl.population import train_seeds
    from ppox.rl.ppo import PPO


def __getattr__(name: str) -> Any:
    # lazy, so that `import ppox.llm` (or any submodule) does not load the gymnasium trainer
    if name == "PPO":
        from ppox.rl.ppo import PPO

        return PPO
    if name == "train_seeds":
        from ppox.rl.population import train_seeds

        return train_seeds
    if name == "distill":
        from ppox.rl.distill import distill

        return distill
    if name in ("PPOConfig", "preset_config"):
        from ppox.rl import config

        return getattr(config, name)
    raise AttributeError(f"module 'ppox' has no attribute {name!r}")
