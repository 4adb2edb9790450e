"""Saved policies load with plain transformers; PPO learns a toy reward; the demo runs end to end."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ppox.llm.config import LLMPPOConfig
from ppox.llm.rollout import sample, tokenize_prompts
from ppox.llm.trainer import LLMPPOTrainer

from .conftest import PROMPTS, length_reward


def greedy(model, tokenizer, prompts):
    ids, mask = tokenize_prompts(tokenizer, prompts, 6, None)
    return sample(model, ids, mask, max_new_tokens=6, temperature=1.0, top_p=1.0, do_sample=False,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def test_save_then_load_with_plain_transformers(tiny_lm, tokenizer, tmp_path):
    cfg = LLMPPOConfig(batch_size=8, num_minibatches=2, max_new_tokens=6, learning_rate=1e-2, total_steps=2,
                       tensorboard=False)
    trainer = LLMPPOTrainer(cfg, tiny_lm, tokenizer, length_reward, PROMPTS)
    trainer.learn(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", local_files_only=True)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "policy", local_files_only=True)
    assert loaded_tok("12+3=")["input_ids"] == tokenizer("12+3=")["input_ids"]
    assert loaded_tok.padding_side == "left" and loaded_tok.eos_token == "<eos>"
    assert torch.equal(greedy(loaded.eval(), loaded_tok, PROMPTS), greedy(trainer.policy, tokenizer, PROMPTS))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == [8, 16]
    for key in ("reward_mean", "reward_std", "kl_ref", "approx_kl", "clipfrac", "entropy", "value_loss",
                "response_len_mean", "response_len_max", "gen_tokens_per_s", "update_tokens_per_s"):
        assert key in records[-1]
    assert (tmp_path / "critic.safetensors").is_file() and (tmp_path / "config.json").is_file()


def share_of_sevens(prompts, completions):
    return [c.count("7") / max(len(c), 1) for c in completions]


@pytest.mark.slow
def test_toy_reward_rises(tiny_lm, tokenizer):
    """Reward = share of '7' in the completion: a few dozen PPO steps must raise it clearly."""
    cfg = LLMPPOConfig(batch_size=32, num_minibatches=2, max_new_tokens=6, learning_rate=3e-3,
                       vf_learning_rate=3e-3, total_steps=30, kl_coef=0.01, tensorboard=False, seed=0)
    trainer = LLMPPOTrainer(cfg, tiny_lm, tokenizer, share_of_sevens, PROMPTS * 4)
    rewards = [trainer.step()["reward_mean"] for _ in range(cfg.total_steps)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, rewards


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from ppox.cli.llm import main

    run_dir = tmp_path / "demo"
    code = main(["demo", "--run-dir", str(run_dir), "--sft-steps", "30", "--num-test", "40", "--n-layer", "1",
                 "--n-embd", "32", "--ppo.total-steps", "2", "--ppo.batch-size", "16", "--ppo.no-tensorboard"])
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "test_problems", "wall_seconds", "gen_tokens_per_s",
                "update_tokens_per_s"):
        assert key in summary
    assert 0 <= summary["accuracy_before"] <= 1 and 0 <= summary["accuracy_after"] <= 1
    assert summary["test_problems"] == 40
    assert AutoModelForCausalLM.from_pretrained(run_dir / "policy", local_files_only=True) is not None
    assert main(["eval", "--model-path", str(run_dir / "policy"), "--num-test", "40"]) == 0


def test_reward_model_directory(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from ppox.llm.reward import RewardModel, score

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    rm = RewardModel(tmp_path / "rm")
    rewards = score(rm, ["1+2=", "12+345="], ["3", "357"])
    assert rewards.shape == (2,) and torch.isfinite(rewards).all()
    # left padding must not change a sequence's score
    assert rm(["12+345="], ["357"])[0] == pytest.approx(rewards[1].item(), abs=1e-5)
