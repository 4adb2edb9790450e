"""ObjectiveConfig: the PPO objective's hyperparameters, one definition for every trainer.

Both trainers' configs inherit it (`PPOConfig(ObjectiveConfig)`, `LLMPPOConfig(ObjectiveConfig)`), so the
fields stay flat (`--clip-coef`, `PPOConfig(clip_coef=0.1)`), carry one name and one validation, and each
trainer only re-declares the defaults (and help) it does differently. `update_objective()` is the plain
ObjectiveConfig that `ppox.core.update.ppo_loss` reads.

Renamed fields keep working for one release: `DEPRECATED_NAMES` maps old names to new ones for Python
keyword arguments, config.json / checkpoint keys (`accepts_deprecated_names`) and CLI flags
(`deprecated_flags`). docs/glossary.md lists every name.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ppox.core.losses import LOSS_AGG_MODES
from ppox.errors import ConfigError

KLEstimator = Literal["k1", "k2", "k3"]
KLPenalty = Literal["none", "loss", "reward"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]

# old name -> new name (removed in the release after next)
DEPRECATED_NAMES = {
    "whiten_advantages": "norm_adv",  # LLM trainer
    "target_ref_kl": "kl_target",  # LLM trainer
}
# kl_penalty was a bool in the gymnasium trainer (PPO-Penalty on/off); it now says where the penalty acts
_OLD_KL_PENALTY = {True: "loss", False: "none"}


@dataclass
class ObjectiveConfig:
    """The PPO objective: advantage estimation, the clipped surrogate, value loss, entropy and KL terms.

    The defaults are CleanRL's (the gymnasium trainer's); the LLM trainer re-declares its own.
    """

    # advantages
    gamma: float = 0.99
    """Discount factor, in (0, 1]."""
    gae_lambda: float = 0.95
    """GAE lambda, in [0, 1]."""
    norm_adv: bool = True
    """Normalise advantages to mean 0, std 1 (RL: per minibatch; LLM: over the valid tokens of the whole batch)."""

    # policy loss
    clip_coef: float | None = 0.2
    """Ratio clip epsilon (lower side, and upper side unless clip_coef_high is set); None disables clipping
    (needs --kl-penalty loss)."""
    clip_coef_high: float | None = None
    """Upper clip epsilon for asymmetric 'clip-higher' (DAPO, e.g. 0.28); None = clip_coef."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the objective by c*A for negative advantages; None = off."""

    # value loss and entropy
    clip_vloss: bool = True
    """Clip the value loss around the rollout's values."""
    vf_clip_coef: float | None = None
    """Value clip range; None = clip_coef."""
    vf_coef: float = 0.5
    """Value-loss coefficient."""
    ent_coef: float = 0.01
    """Entropy-bonus coefficient."""
    loss_agg_mode: LossAgg = "token-mean"
    """How per-element losses of a masked (token) batch are reduced: token-mean, seq-mean-token-mean or
    seq-mean-token-sum; without a mask (one element per transition) every mode is the plain mean."""

    # KL penalty
    kl_penalty: KLPenalty = "none"
    """Where the KL penalty acts: 'none', 'loss' (adds kl_coef * KL to the loss) or 'reward' (LLM: folds
    -kl_coef * KL into every token's reward)."""
    kl_coef: float = 1.0
    """(Initial) KL-penalty coefficient beta."""
    kl_target: float | None = 0.01
    """Target KL of the adaptive beta rule (RL: x2 above 1.5*target, /2 below target/1.5, per update; LLM: the
    proportional controller of Ziegler et al., per completion); None = fixed beta."""
    kl_estimator: KLEstimator | None = "k3"
    """KL estimator of the penalty: k1, k2 or k3 (Schulman 2020); None = k1 in the reward, k3 in the loss."""
    target_kl: float | None = None
    """Stop the epochs of an update early once an epoch's mean approx_kl (to the rollout policy) exceeds
    this; None = never."""

    @property
    def resolved_kl_estimator(self) -> str:
        if self.kl_estimator is not None:
            return self.kl_estimator
        return "k1" if self.kl_penalty == "reward" else "k3"

    def validate(self) -> None:
        """The one validation of the objective's fields (the trainers' configs call it from theirs)."""
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.clip_coef is not None and not 0.0 < self.clip_coef < 1.0:
            raise ConfigError(f"clip_coef must be in (0, 1) or None, got {self.clip_coef}")
        if self.clip_coef_high is not None:
            if self.clip_coef is None:
                raise ConfigError("clip_coef_high needs clip_coef (the lower bound) to be set")
            if not self.clip_coef_high > 0:
                raise ConfigError(f"clip_coef_high must be > 0, got {self.clip_coef_high}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ConfigError(f"dual_clip must be > 1, got {self.dual_clip}")
        if self.kl_penalty not in ("none", "loss", "reward"):
            raise ConfigError(f"kl_penalty must be none, loss or reward, got {self.kl_penalty!r}")
        if self.clip_coef is None and self.kl_penalty != "loss":
            raise ConfigError("with clip_coef None there is no trust region: add --kl-penalty loss")
        for name in ("vf_coef", "ent_coef", "kl_coef"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("vf_clip_coef", "kl_target", "target_kl"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value}")
        if self.kl_estimator not in (None, "k1", "k2", "k3"):
            raise ConfigError(f"unknown kl_estimator {self.kl_estimator!r}; choose k1, k2 or k3")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ConfigError(f"unknown loss_agg_mode {self.loss_agg_mode!r}; choose {', '.join(LOSS_AGG_MODES)}")

    def update_objective(self) -> ObjectiveConfig:
        """This config's objective fields as the plain ObjectiveConfig that ppox.core's update reads."""
        return ObjectiveConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ObjectiveConfig)})


# ------------------------------------------------------------------ deprecated names
def rename_deprecated(values: dict[str, Any], stacklevel: int = 3) -> dict[str, Any]:
    """`values` (keyword arguments or a config.json dict) with old names and values replaced by the
    current ones, one DeprecationWarning per replacement."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in DEPRECATED_NAMES:
            new = DEPRECATED_NAMES[name]
            warnings.warn(f"{name} is deprecated; use {new}", DeprecationWarning, stacklevel=stacklevel)
            if new in values:
                raise ConfigError(f"both {name} (deprecated) and {new} are set: keep {new}")
            name = new
        if name == "kl_penalty" and isinstance(value, bool):
            warnings.warn(f"kl_penalty={value} is deprecated; use kl_penalty={_OLD_KL_PENALTY[value]!r}",
                          DeprecationWarning, stacklevel=stacklevel)
            value = _OLD_KL_PENALTY[value]
        out[name] = value
    return out


C = TypeVar("C", bound=type)


def accepts_deprecated_names(cls: C) -> C:
    """Class decorator (over @dataclass): the constructor accepts the deprecated field names and values too."""
    init: Callable[..., None] = cls.__init__  # type: ignore[misc]

    @functools.wraps(init)  # keeps the signature: tyro and help() still see the fields
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **rename_deprecated(kwargs, stacklevel=3))

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def deprecated_flags(argv: list[str]) -> list[str]:
    """`argv` with deprecated flags replaced by the current ones, printing one warning line per flag.

    `--whiten-advantages` -> `--norm-adv`, `--target-ref-kl X` -> `--kl-target X` (and their --no- and
    underscore forms), and the gymnasium trainer's old switch `--kl-penalty` (no value) -> `--kl-penalty loss`,
    `--no-kl-penalty` -> `--kl-penalty none`.
    """
    renames: dict[str, str] = {}
    for old, new in DEPRECATED_NAMES.items():
        for spelling in (old, old.replace("_", "-")):
            renames[f"--{spelling}"] = _flag(new)
            renames[f"--no-{spelling}"] = "--no-" + _flag(new)[2:]
            renames[f"--no_{spelling}"] = "--no-" + _flag(new)[2:]
    modes = typing.get_args(KLPenalty)
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":  # everything after is positional
            out.extend(argv[i:])
            break
        flag, eq, value = arg.partition("=")
        if flag in renames:
            print(f"warning: {flag} is deprecated; use {renames[flag]}", file=sys.stderr)
            out.append(renames[flag] + eq + value)
        elif arg in ("--kl-penalty", "--kl_penalty") and (i + 1 == len(argv) or argv[i + 1] not in modes):
            print(f"warning: {arg} without a value is deprecated; use --kl-penalty loss", file=sys.stderr)
            out.extend(["--kl-penalty", "loss"])
        elif arg in ("--no-kl-penalty", "--no_kl_penalty"):
            print(f"warning: {arg} is deprecated; use --kl-penalty none", file=sys.stderr)
            out.extend(["--kl-penalty", "none"])
        else:
            out.append(arg)
    return out
