"""LoRA through peft: the reference is the policy's frozen base, only adapters train, saves merge."""

import builtins

import pytest
import torch
from transformers import AutoModelForCausalLM

from ppox.core.update import PolicyOutput
from ppox.errors import ConfigError
from ppox.llm.config import LLMPPOConfig
from ppox.llm.trainer import LLMPPOTrainer

from .conftest import PROMPTS, length_reward
from .test_save_and_learn import greedy, share_of_sevens


def lora_trainer(model, tokenizer, **overrides) -> LLMPPOTrainer:
    pytest.importorskip("peft")
    cfg = LLMPPOConfig(
        batch_size=8, num_minibatches=2, grad_accum_steps=2, max_new_tokens=6, learning_rate=1e-2, lora_r=4,
        lora_alpha=8.0, tensorboard=False, torch_threads=2, seed=3,
    ).replace(**overrides)
    return LLMPPOTrainer(cfg, model, tokenizer, length_reward, PROMPTS)


def is_lora(name: str) -> bool:
    return ".lora_" in name


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_lora_reference_is_the_base_and_first_ratio_is_one(tiny_lm, tokenizer, critic):
    trainer = lora_trainer(tiny_lm, tokenizer, critic=critic)
    batch, stats, _ = trainer.rollout(PROMPTS)
    assert torch.equal(batch["logprobs"], batch["ref_logprobs"])
    assert stats["kl_ref"] == 0.0 and stats["kl_ref_token"] == 0.0

    seen: list[tuple[PolicyOutput, dict]] = []
    forward = trainer.forward
    trainer.forward = lambda mb: seen.append((out := forward(mb), mb)) or out
    record = trainer.step(PROMPTS)
    out, mb = seen[0]
    ratio = (out.logprobs - mb["logprobs"]).exp()[mb["mask"]]
    assert torch.equal(ratio, torch.ones_like(ratio))
    assert record["skipped_updates"] == 0
    # after the update the adapters move the policy away from the (unchanged) reference
    batch, stats, _ = trainer.rollout(PROMPTS)
    assert stats["kl_ref_token"] > 0


def test_lora_shares_the_base_weights_with_the_reference(tiny_lm, tokenizer):
    """No deep copy for the reference: the only parameter storage is the policy's and the critic's."""
    base_numel = sum(p.numel() for p in tiny_lm.parameters())
    trainer = lora_trainer(tiny_lm, tokenizer, critic="shared")
    assert trainer.ref is None
    storages: set[int] = set()
    for value in vars(trainer).values():
        if isinstance(value, torch.nn.Module):
            storages |= {p.untyped_storage().data_ptr() for p in value.parameters()}
    own = {p.untyped_storage().data_ptr() for p in [*trainer.policy.parameters(), *trainer.critic.parameters()]}
    assert storages == own
    base = sum(p.numel() for n, p in trainer.policy.named_parameters() if not is_lora(n))
    assert base == base_numel  # the base exists once


def test_lora_trains_only_adapters_and_critic(tiny_lm, tokenizer):
    trainer = lora_trainer(tiny_lm, tokenizer)
    policy_trainable = [n for n, p in trainer.policy.named_parameters() if p.requires_grad]
    assert policy_trainable and all(is_lora(n) for n in policy_trainable)
    expected = {id(p) for p in trainer.policy.parameters() if p.requires_grad}
    expected |= {id(p) for p in trainer.critic.parameters()}
    assert {id(p) for p in trainer.params} == expected
    assert all(p.requires_grad for p in trainer.critic.parameters())  # the separate critic trains fully

    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    trainer.step(PROMPTS)
    after = dict(trainer.policy.named_parameters())
    for name, value in before.items():
        if is_lora(name):
            continue
        assert torch.equal(after[name], value), f"base weight {name} changed"
    assert any(not torch.equal(after[n], v) for n, v in before.items() if ".lora_B." in n)


def test_lora_policy_saves_merged_and_loads_with_plain_transformers(tiny_lm, tokenizer, tmp_path):
    trainer = lora_trainer(tiny_lm, tokenizer, total_steps=2)
    trainer.learn(tmp_path)
    saved = tmp_path / "policy"
    assert not (saved / "adapter_config.json").exists()  # an ordinary model directory, not an adapter
    loaded = AutoModelForCausalLM.from_pretrained(saved, local_files_only=True).eval()
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    import copy

    merged = copy.deepcopy(trainer.policy).merge_and_unload().eval()
    assert torch.equal(greedy(loaded, tokenizer, PROMPTS), greedy(merged, tokenizer, PROMPTS))
    for name, p in merged.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p, rtol=0, atol=0)
    # saving left the live policy a LoRA model that keeps training
    assert any(is_lora(n) for n, _ in trainer.policy.named_parameters())


@pytest.mark.slow
def test_lora_toy_reward_rises(tiny_lm, tokenizer):
    """Reward = share of '7's, adapters only: the reward must rise clearly within 20 steps."""
    pytest.importorskip("peft")
    # A random GPT-2's tied embeddings (std 0.02) give near-uniform logits, and with the final layer
    # norm and the LM head frozen the adapters cannot sharpen them; larger embeddings stand in for a
    # pretrained model's.
    with torch.no_grad():
        tiny_lm.transformer.wte.weight.mul_(10)
    cfg = LLMPPOConfig(batch_size=32, num_minibatches=2, max_new_tokens=6, learning_rate=3e-3,
                       vf_learning_rate=3e-3, total_steps=20, kl_coef=0.01, tensorboard=False, seed=0,
                       lora_r=8, lora_alpha=16.0)
    trainer = LLMPPOTrainer(cfg, tiny_lm, tokenizer, share_of_sevens, PROMPTS * 4)
    rewards = [trainer.step()["reward_mean"] for _ in range(cfg.total_steps)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, rewards


def test_lora_without_peft_names_the_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"ppox\[lora\]"):
        LLMPPOConfig(lora_r=8)
    LLMPPOConfig(lora_r=0)  # full fine-tuning needs no peft


def test_apply_lora_without_peft_names_the_extra(monkeypatch, tiny_lm):
    from ppox.llm.models import apply_lora

    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(ConfigError, match=r"ppox\[lora\]"):
        apply_lora(tiny_lm, 4, 8.0)
