"""Each loss aggregation mode, as the trainer configures the core, against a hand computation."""

import math

import pytest
import torch

from ppox.core import AdaptiveKLController, aggregate, kl_estimate
from ppox.core.update import PolicyOutput, ppo_loss
from ppox.llm.config import LLMPPOConfig
from ppox.llm.trainer import LLMPPOTrainer

from .conftest import PROMPTS, zero_reward

MASK = [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]  # ragged: 4, 2 and 1 valid tokens


def ragged_batch():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor(MASK, dtype=torch.bool)
    old = -torch.rand(3, 4, generator=g) * 2
    mb = {
        "logprobs": old,
        "advantages": torch.randn(3, 4, generator=g),
        "returns": torch.randn(3, 4, generator=g),
        "values": torch.randn(3, 4, generator=g),
        "mask": mask,
    }
    out = PolicyOutput(
        logprobs=old + torch.randn(3, 4, generator=g) * 0.3,
        entropy=torch.rand(3, 4, generator=g),
        values=mb["values"] + torch.randn(3, 4, generator=g) * 0.5,
    )
    return out, mb


def hand_loss(out, mb, cfg: LLMPPOConfig) -> float:
    """The same objective written as plain loops over the valid tokens."""
    per_seq = {"pg": [], "vf": [], "ent": []}
    for b in range(3):
        pg, vf, ent = [], [], []
        for t in range(4):
            if not MASK[b][t]:
                continue
            r = math.exp(out.logprobs[b, t].item() - mb["logprobs"][b, t].item())
            a = mb["advantages"][b, t].item()
            pg.append(-min(r * a, min(max(r, 1 - cfg.clip_coef), 1 + cfg.clip_coef) * a))
            v, v_old, ret = out.values[b, t].item(), mb["values"][b, t].item(), mb["returns"][b, t].item()
            v_clipped = v_old + min(max(v - v_old, -cfg.vf_clip_coef), cfg.vf_clip_coef)
            vf.append(0.5 * max((v - ret) ** 2, (v_clipped - ret) ** 2))
            ent.append(out.entropy[b, t].item())
        for key, xs in zip(("pg", "vf", "ent"), (pg, vf, ent), strict=True):
            per_seq[key].append(xs)

    def reduce(seqs):
        if cfg.loss_agg_mode == "token-mean":
            flat = [x for s in seqs for x in s]
            return sum(flat) / len(flat)
        if cfg.loss_agg_mode == "seq-mean-token-mean":
            return sum(sum(s) / len(s) for s in seqs) / len(seqs)
        return sum(sum(s) for s in seqs) / len(seqs)  # seq-mean-token-sum

    return reduce(per_seq["pg"]) + cfg.vf_coef * reduce(per_seq["vf"]) - cfg.ent_coef * reduce(per_seq["ent"])


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_loss_aggregation_matches_hand_computation(mode):
    cfg = LLMPPOConfig(loss_agg_mode=mode, vf_coef=0.5, ent_coef=0.01, vf_clip_coef=0.2)
    out, mb = ragged_batch()
    loss, _ = ppo_loss(out, mb, cfg.update_objective())
    assert loss.item() == pytest.approx(hand_loss(out, mb, cfg), rel=1e-5)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_kl_loss_term_uses_the_aggregation_mode(tiny_lm, tokenizer, mode):
    cfg = LLMPPOConfig(batch_size=8, num_minibatches=1, max_new_tokens=5, kl_penalty="loss", kl_coef=0.3,
                       loss_agg_mode=mode, tensorboard=False)
    trainer = LLMPPOTrainer(cfg, tiny_lm, tokenizer, zero_reward, PROMPTS)
    batch, _, _ = trainer.rollout(PROMPTS)
    batch["ref_logprobs"] = batch["ref_logprobs"] - 0.5 * batch["mask"]  # pretend the policy moved
    out = trainer.forward(batch)
    k3 = kl_estimate(batch["ref_logprobs"] - out.logprobs, "k3")
    assert cfg.resolved_kl_estimator == "k3"
    torch.testing.assert_close(out.extra_loss, 0.3 * aggregate(k3, batch["mask"], mode))
    assert out.extra_loss.item() > 0


def test_adaptive_kl_controller_with_horizon():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    ctl.update(12.0, n_steps=1000)  # error clipped to +0.2
    assert ctl.coef == pytest.approx(0.1 * (1 + 0.2 * 1000 / 10_000))
    ctl.update(5.4, n_steps=1000)  # error -0.1
    assert ctl.coef == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))
    restored = AdaptiveKLController(1.0, None)
    restored.load_state_dict(ctl.state_dict())
    assert restored.horizon == 10_000 and restored.coef == ctl.coef
    # without a horizon: the PPO paper's doubling/halving, unchanged
    classic = AdaptiveKLController(1.0, target=0.01)
    assert classic.update(0.1) == 2.0 and classic.update(0.001) == 1.0
