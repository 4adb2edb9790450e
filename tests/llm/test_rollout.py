"""Rollout invariants: exact ratio 1 at the first minibatch, zero KL to the reference, masks."""

import torch

from ppox.core.update import PolicyOutput, ppo_loss
from ppox.llm.config import LLMPPOConfig
from ppox.llm.rollout import response_mask
from ppox.llm.trainer import LLMPPOTrainer

from .conftest import PROMPTS, length_reward


def make_trainer(model, tokenizer, **overrides) -> LLMPPOTrainer:
    cfg = LLMPPOConfig(
        batch_size=8, num_minibatches=2, grad_accum_steps=2, max_new_tokens=6, learning_rate=1e-3,
        tensorboard=False, torch_threads=2, seed=3,
    ).replace(**overrides)
    return LLMPPOTrainer(cfg, model, tokenizer, length_reward, PROMPTS)


def test_response_mask_covers_tokens_up_to_first_eos():
    eos = 1
    responses = torch.tensor([[5, 6, 1, 1, 1], [5, 1, 0, 0, 0], [5, 6, 7, 8, 9], [1, 4, 4, 1, 0]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(response_mask(responses, eos), expected)  # pad == eos (row 0) handled by position


def test_first_minibatch_ratio_is_exactly_one(tiny_lm, tokenizer):
    trainer = make_trainer(tiny_lm, tokenizer)
    seen: list[tuple[PolicyOutput, dict]] = []
    forward = trainer.forward

    def recording_forward(mb):
        out = forward(mb)
        seen.append((out, mb))
        return out

    trainer.forward = recording_forward
    record = trainer.step(PROMPTS)
    out, mb = seen[0]
    mask = mb["mask"]
    # The batch really is ragged on both sides: left-padded prompts, right-padded responses.
    first_epoch = torch.cat([m["mask"] for _, m in seen[:4]])  # 4 micro-batches of 2 = the batch
    assert (torch.cat([m["attention_mask"][:, 0] for _, m in seen[:4]]) == 0).any()
    assert not first_epoch.all() and first_epoch[:, 0].all()
    ratio = (out.logprobs - mb["logprobs"]).exp()
    assert torch.equal(ratio[mask], torch.ones_like(ratio[mask]))
    _, stats = ppo_loss(out, mb, trainer.objective)
    assert stats["approx_kl"].item() == 0.0
    assert stats["clipfrac"].item() == 0.0
    assert record["skipped_updates"] == 0 and record["epochs_run"] == 4


def test_shared_value_head_ratio_is_exactly_one(tiny_lm, tokenizer):
    trainer = make_trainer(tiny_lm, tokenizer, critic="shared", num_minibatches=4, grad_accum_steps=1)
    batch, _, _ = trainer.rollout(PROMPTS)
    mb = {k: v[2:4] for k, v in batch.items()}
    out = trainer.forward(mb)
    assert torch.equal(out.logprobs[mb["mask"]], mb["logprobs"][mb["mask"]])
    assert torch.equal(out.values[mb["mask"]], mb["values"][mb["mask"]])


def test_kl_to_reference_is_zero_before_any_update(tiny_lm, tokenizer):
    trainer = make_trainer(tiny_lm, tokenizer)
    batch, stats, completions = trainer.rollout(PROMPTS)
    assert torch.equal(batch["logprobs"], batch["ref_logprobs"])
    assert stats["kl_ref"] == 0.0 and stats["kl_ref_token"] == 0.0
    assert len(completions) == len(PROMPTS)


def test_masks_exclude_prompt_and_padding(tiny_lm, tokenizer):
    trainer = make_trainer(tiny_lm, tokenizer)
    batch, _, _ = trainer.rollout(PROMPTS)
    mask = batch["mask"]
    # the response mask counts exactly the generated tokens up to and including EOS
    responses = batch["input_ids"][:, batch["input_ids"].shape[1] - mask.shape[1]:]
    lengths = mask.sum(-1)
    for row, n in zip(responses, lengths, strict=True):
        hit = (row == tokenizer.eos_token_id).nonzero()
        assert n == (hit[0, 0] + 1 if len(hit) else row.shape[0])
    assert torch.all(batch["advantages"][~mask] == 0) and torch.all(batch["returns"][~mask] == 0)

    out = trainer.forward(batch)
    loss, _ = ppo_loss(out, batch, trainer.objective)
    # 1. the trainer zeroes its outputs at padded positions, and changing them changes nothing
    assert torch.all(out.logprobs[~mask] == 0) and torch.all(out.values[~mask] == 0)
    junk = (~mask).float() * 5.0
    poisoned = PolicyOutput(out.logprobs + junk, out.entropy - junk, out.values + junk)
    assert torch.equal(ppo_loss(poisoned, batch, trainer.objective)[0], loss)
    # 2. changing a padded *input token* (left pad of a prompt, right pad after EOS) changes nothing
    ids = batch["input_ids"].clone()
    pads = batch["attention_mask"] == 0
    assert pads.any()
    ids[pads] = 7
    loss2, _ = ppo_loss(trainer.forward({**batch, "input_ids": ids}), batch, trainer.objective)
    torch.testing.assert_close(loss2, loss, rtol=1e-6, atol=1e-7)


def test_rewards_sit_on_the_last_response_token(tiny_lm, tokenizer):
    # No KL, no whitening, gamma = lambda = 1 and a zero-initialised critic: every valid token's
    # return is the completion's task reward.
    trainer = make_trainer(tiny_lm, tokenizer, kl_penalty="none", norm_adv=False, gae_lambda=1.0)
    batch, _, completions = trainer.rollout(PROMPTS)
    expected = torch.tensor([float(len(c)) for c in completions]).unsqueeze(1).expand_as(batch["returns"])
    mask = batch["mask"]
    assert torch.equal(batch["returns"][mask], expected[mask])
    assert torch.equal(batch["advantages"][mask], expected[mask])  # values are 0 before training
