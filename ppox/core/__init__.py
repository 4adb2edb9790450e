"""The PPO core shared by classic RL and language-model training.

Pure functions for the math (objective, advantages, KL estimators) and one short update loop.
"""

from ppox.core.advantages import gae, normalize
from ppox.core.kl import KL_ESTIMATORS, AdaptiveKLController, kl_estimate
from ppox.core.losses import (
    LOSS_AGG_MODES,
    aggregate,
    clipped_surrogate,
    entropy_bonus,
    explained_variance,
    value_loss,
)
from ppox.core.objective import ObjectiveConfig

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "AdaptiveKLController",
    "ObjectiveConfig",
    "aggregate",
    "clipped_surrogate",
    "entropy_bonus",
    "explained_variance",
    "gae",
    "kl_estimate",
    "normalize",
    "value_loss",
]
