"""PPO loss terms as pure functions (Schulman et al. 2017, eq. 7 and 9).

Every function returns per-element values; `aggregate` reduces them, optionally over a mask
(token-level PPO for language models reduces over the valid response tokens only).
"""

from __future__ import annotations

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_coef: float,
    clip_coef_high: float | None = None,
    dual_clip: float | None = None,
) -> torch.Tensor:
    """Per-element clipped surrogate objective L^CLIP (to be maximised).

    L = min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)

    `clip_coef_high` (DAPO's "clip-higher") widens the upper bound only; None means symmetric.
    `dual_clip` = c > 1 (Ye et al. 2020) additionally bounds the objective from below by c * A for
    negative advantages, so one very large ratio cannot dominate the batch.
    """
    eps_high = clip_coef if clip_coef_high is None else clip_coef_high
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + eps_high) * advantages
    objective = torch.minimum(unclipped, clipped)
    if dual_clip is not None:
        objective = torch.where(advantages < 0, torch.maximum(objective, dual_clip * advantages), objective)
    return objective


def clip_fraction(
    ratio: torch.Tensor, clip_coef: float, clip_coef_high: float | None = None
) -> torch.Tensor:
    """Per-element indicator (float) of the ratio lying outside the clip range."""
    eps_high = clip_coef if clip_coef_high is None else clip_coef_high
    return ((ratio < 1.0 - clip_coef) | (ratio > 1.0 + eps_high)).float()


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip_coef: float | None = None,
) -> torch.Tensor:
    """Per-element value loss 0.5 * (V - R)^2, optionally clipped around the rollout's values.

    With clipping the loss is max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) / 2,
    the pessimistic choice used by OpenAI baselines (detail 9 of the 37).
    """
    unclipped = (values - returns) ** 2
    if clip_coef is None or old_values is None:
        return 0.5 * unclipped
    clipped_values = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
    return 0.5 * torch.maximum(unclipped, (clipped_values - returns) ** 2)


def entropy_bonus(entropy: torch.Tensor) -> torch.Tensor:
    """Identity kept for symmetry: entropy is already per element; the loss subtracts ent_coef * it."""
    return entropy


def aggregate(values: torch.Tensor, mask: torch.Tensor | None = None, mode: str = "token-mean") -> torch.Tensor:
    """Reduce per-element values to a scalar.

    Without a mask: the plain mean (classic RL, one element per transition).
    With a (batch, seq) mask:
      token-mean           sum(x * m) / sum(m)                  every valid token weighs the same
      seq-mean-token-mean  mean_b( sum_t(x * m) / sum_t(m) )     every sequence weighs the same
      seq-mean-token-sum   mean_b( sum_t(x * m) )                Dr. GRPO style: no length normalisation
    """
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    per_seq_sum = (values * mask).sum(dim=-1)
    if mode == "seq-mean-token-mean":
        return (per_seq_sum / mask.sum(dim=-1).clamp_min(1.0)).mean()
    if mode == "seq-mean-token-sum":
        return per_seq_sum.mean()
    raise ValueError(f"unknown loss aggregation mode {mode!r}; choose one of {', '.join(LOSS_AGG_MODES)}")


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """1 - Var[targets - predictions] / Var[targets]; NaN when the targets are constant."""
    var_targets = torch.var(targets)
    if var_targets == 0:
        return float("nan")
    return float(1.0 - torch.var(targets - predictions) / var_targets)
