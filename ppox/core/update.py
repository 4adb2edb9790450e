"""The PPO update: K epochs of shuffled minibatch steps on one rollout (Schulman et al. 2017, Alg. 1).

Shared by classic RL (one element per transition) and language models (one element per token,
with a mask). The caller supplies `forward(minibatch) -> PolicyOutput`, which evaluates the
current policy and critic on the stored observations/actions; everything else is here.

Per minibatch, with r = exp(log pi(a|s) - log pi_old(a|s)):
    L = -L^CLIP(r, A) + vf_coef * L^VF - ent_coef * H[pi] + kl_coef * KL(pi_old || pi)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from ppox.core.advantages import normalize
from ppox.core.kl import kl_estimate
from ppox.core.losses import aggregate, clip_fraction, clipped_surrogate, value_loss
from ppox.core.objective import ObjectiveConfig


class Collective(Protocol):
    """What the update needs from a process group; passed in (ppox.distributed provides one), so the
    math does not depend on torch.distributed."""

    enabled: bool

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all processes, in place."""
        ...

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the parameters' gradients over all processes."""
        ...


@dataclass
class PolicyOutput:
    """What `forward` returns for a minibatch; shapes match the minibatch's `logprobs`."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None  # None when the critic is trained elsewhere
    extra_loss: torch.Tensor | None = None  # e.g. a KL-to-reference term of an LLM trainer


def ppo_loss(
    out: PolicyOutput,
    mb: dict[str, torch.Tensor],
    objective: ObjectiveConfig,
    kl_coef: float = 0.0,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective on one minibatch. `mb` holds logprobs, advantages, returns, values, [mask].

    `objective` is a trainer config's `update_objective()`: its kl_penalty "loss" adds the KL to the
    rollout policy (PPO-Penalty); a KL to a reference model comes in through `out.extra_loss` instead.
    `all_reduce_sum` (multi-process training) makes the advantage normalisation global.
    """
    mask = mb.get("mask")
    log_ratio = out.logprobs - mb["logprobs"]
    ratio = log_ratio.exp()

    advantages = mb["advantages"]
    if objective.norm_adv:
        advantages = normalize(advantages, mask, all_reduce_sum=all_reduce_sum)

    if objective.clip_coef is None:
        surrogate = ratio * advantages
    else:
        surrogate = clipped_surrogate(
            ratio, advantages, objective.clip_coef, objective.clip_coef_high, objective.dual_clip
        )
    agg = objective.loss_agg_mode
    policy_loss = -aggregate(surrogate, mask, agg)

    entropy = aggregate(out.entropy, mask, agg)
    kl_penalty = aggregate(kl_estimate(log_ratio, objective.resolved_kl_estimator), mask, agg)
    loss = policy_loss - objective.ent_coef * entropy
    if objective.kl_penalty == "loss":
        loss = loss + kl_coef * kl_penalty

    v_loss = torch.zeros((), device=loss.device)
    if out.values is not None:
        vf_clip = objective.vf_clip_coef if objective.vf_clip_coef is not None else objective.clip_coef
        vf_clip = vf_clip if objective.clip_vloss else None
        v_loss = aggregate(value_loss(out.values, mb["returns"], mb["values"], vf_clip), mask, agg)
        loss = loss + objective.vf_coef * v_loss
    if out.extra_loss is not None:
        loss = loss + out.extra_loss

    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": entropy.detach(),
            "kl_penalty": kl_penalty.detach(),
            "approx_kl": aggregate(kl_estimate(log_ratio, "k3"), mask),
            "old_approx_kl": aggregate(kl_estimate(log_ratio, "k1"), mask),
            "clipfrac": aggregate(
                clip_fraction(
                    ratio,
                    objective.clip_coef if objective.clip_coef is not None else float("inf"),
                    objective.clip_coef_high,
                ),
                mask,
            ),
        }
    return loss, stats


@dataclass
class UpdateResult:
    stats: dict[str, float]
    epochs_run: int
    minibatch_updates: int  # micro-batches whose loss was finite
    optimizer_steps: int
    skipped_updates: int


def ppo_update(
    batch: dict[str, torch.Tensor],
    forward: Callable[[dict[str, torch.Tensor]], PolicyOutput],
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.nn.Parameter],
    objective: ObjectiveConfig,
    *,
    update_epochs: int,
    num_minibatches: int,
    max_grad_norm: float | None,
    target_kl: float | None = None,
    kl_coef: float = 0.0,
    grad_accum_steps: int = 1,
    generator: torch.Generator | None = None,
    on_nonfinite: Callable[[], None] | None = None,
    collective: Collective | None = None,
    gradients_synced: bool = False,
) -> UpdateResult:
    """Run the PPO epochs on `batch` (every tensor has the batch dimension first).

    Each minibatch is split into `grad_accum_steps` micro-batches whose gradients are summed
    before one optimizer step. A minibatch whose loss or gradient is not finite is skipped
    (the weights stay untouched) and counted; `on_nonfinite` is called for each.
    `target_kl` stops the epoch loop early once the mean approx_kl of an epoch exceeds it.

    With a `collective` (torch.distributed, one process per rank) each process holds its share of
    the batch; gradients are averaged over processes every minibatch, advantage normalisation and
    the early-stopping KL are global, and a non-finite minibatch on any process is skipped on all,
    so every process takes the same optimizer steps and ends with the same weights.
    `gradients_synced=True` means the modules average their own gradients inside backward (FSDP's
    reduce-scatter): then the loop does not all-reduce them again, and every process runs backward
    on every micro-batch, a non-finite one included, since backward itself is a collective there.
    """
    reduce_sum = collective.sum_ if collective is not None and collective.enabled else None
    params = [p for p in params if p.requires_grad]
    batch_size = next(iter(batch.values())).shape[0]
    if batch_size % num_minibatches:
        raise ValueError(f"batch size {batch_size} is not divisible by num_minibatches {num_minibatches}")
    minibatch_size = batch_size // num_minibatches
    if minibatch_size % grad_accum_steps:
        raise ValueError(f"minibatch size {minibatch_size} is not divisible by grad_accum_steps {grad_accum_steps}")
    micro_size = minibatch_size // grad_accum_steps
    device = next(iter(batch.values())).device

    totals: dict[str, torch.Tensor] = {}
    count = 0
    skipped = 0
    optimizer_steps = 0
    epochs_run = 0
    for _epoch in range(update_epochs):
        epochs_run += 1
        perm = torch.randperm(batch_size, generator=generator).to(device)
        epoch_kl = torch.zeros((), device=device)
        epoch_count = 0
        for start in range(0, batch_size, minibatch_size):
            optimizer.zero_grad(set_to_none=True)
            loss_finite = True
            for micro in range(grad_accum_steps):
                idx = perm[start + micro * micro_size : start + (micro + 1) * micro_size]
                mb = {k: v[idx] for k, v in batch.items()}
                loss, stats = ppo_loss(forward(mb), mb, objective, kl_coef, reduce_sum)
                if not torch.isfinite(loss):
                    # no break: the other micro-batches still run, so every process makes the
                    # same sequence of collective calls
                    loss_finite = False
                    if gradients_synced and reduce_sum is not None:
                        (loss / grad_accum_steps).backward()  # FSDP: backward's collectives run everywhere
                    continue
                (loss / grad_accum_steps).backward()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
                epoch_kl = epoch_kl + stats["approx_kl"]
                epoch_count += 1
            if reduce_sum is not None and gradients_synced:  # skip on all if any process saw a non-finite loss
                loss_finite = bool(reduce_sum(torch.tensor(float(not loss_finite), device=device)) == 0)
            elif reduce_sum is not None:
                if not loss_finite:  # NaN gradients make every process skip this minibatch too
                    for p in params:
                        p.grad = torch.full_like(p, float("nan"))
                collective.average_gradients(params)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                if max_grad_norm is not None
                else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            )
            if not loss_finite or not torch.isfinite(grad_norm):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                if on_nonfinite is not None:
                    on_nonfinite()
                continue
            optimizer.step()
            optimizer_steps += 1
        if target_kl is not None:
            kl_and_count = torch.stack([epoch_kl, torch.tensor(float(epoch_count), device=device)])
            if reduce_sum is not None:
                kl_and_count = reduce_sum(kl_and_count)
            if kl_and_count[1] > 0 and float(kl_and_count[0] / kl_and_count[1]) > target_kl:
                break

    result = {k: float(v / max(count, 1)) for k, v in totals.items()}
    return UpdateResult(result, epochs_run, count, optimizer_steps, skipped)
