"""Offline demo: teach a tiny GPT-2 some arithmetic, then improve it with PPO.

1. A character-level tokenizer and arithmetic problems ("12+345=" -> "357<eos>"), with a
   held-out test split that training never sees.
2. Supervised learning of a tiny GPT-2 from scratch, deliberately stopped early: a modest
   greedy exact-match accuracy on the test split.
3. PPO with an exact-match (or partial-credit) reward from the SFT model, against a frozen copy
   of it as the KL reference; greedy test accuracy before and after is the result.

Everything is built locally: no network, no downloaded weights. `ppox llm demo --run-dir DIR`
writes DIR/summary.json, the SFT model (DIR/sft_model) and the PPO policy (DIR/policy).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ppox.errors import ConfigError
from ppox.io import atomic_write_json
from ppox.llm.config import LLMPPOConfig
from ppox.llm.tasks import REWARDS, Problem, arithmetic_splits, char_tokenizer, exact_match_reward, greedy_accuracy

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _demo_ppo_defaults() -> LLMPPOConfig:
    # Tuned on the shared 2-core CPU: a large batch with a small learning rate. With few
    # completions per step the gradient of the exact-match reward is mostly noise, and Adam turns
    # noise into steps of full size: larger learning rates made test accuracy *fall*.
    return LLMPPOConfig(
        total_steps=70,
        batch_size=512,
        num_minibatches=4,
        update_epochs=4,
        max_new_tokens=6,
        learning_rate=5e-5,
        vf_learning_rate=1e-3,
        gae_lambda=1.0,  # the critic starts from zero: do not lean on it for credit assignment
        kl_coef=0.01,
        eval_every=10,
        critic="separate",
    )


@dataclass
class DemoConfig:
    """The arithmetic demo: supervised pre-training of a tiny GPT-2, then PPO."""

    run_dir: str = "runs/llm-demo"
    """Where summary.json, metrics.jsonl, the SFT model and the PPO policy go."""
    seed: int = 1
    """Seed of the problems, the model initialisation and PPO."""
    num_test: int = 500
    """Held-out test problems (never trained on)."""
    n_layer: int = 3
    """GPT-2 layers."""
    n_embd: int = 128
    """GPT-2 width."""
    n_head: int = 4
    """GPT-2 attention heads."""
    sft_steps: int = 1500
    """Supervised steps: few on purpose, so that the model starts PPO with a modest accuracy."""
    sft_batch_size: int = 128
    """Problems per supervised step."""
    sft_learning_rate: float = 1.5e-3
    """AdamW learning rate of the supervised phase (linear warm-up over 50 steps)."""
    reward: Literal["exact", "partial"] = "partial"
    """PPO reward: 'exact' match, or 'partial' credit for correct digits (exact match = 1)."""
    ppo: LLMPPOConfig = field(default_factory=_demo_ppo_defaults)
    """PPO hyperparameters (task, reward, seed and run_dir are set by the demo)."""
    torch_threads: int = 1
    """CPU threads for torch. 1 by default: on a 2-core machine shared with other work, two
    threads stall each other (oversubscription made steps 10x slower); use 2 on an idle machine."""

    def __post_init__(self) -> None:
        for name in ("num_test", "n_layer", "n_embd", "n_head", "sft_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.sft_steps < 0:
            raise ConfigError(f"sft_steps must be >= 0, got {self.sft_steps}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")


def tiny_gpt2(tokenizer, n_layer: int, n_embd: int, n_head: int, n_positions: int = 32):
    """A small GPT-2 from scratch (no dropout: PPO needs deterministic forward passes)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def _sft_tensors(tokenizer, problems: list[Problem]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt + answer + <eos>: ids, attention mask and labels (loss on the answer only)."""
    rows = []
    for p in problems:
        prompt = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(p.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt, answer))
    width = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (n, seq)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (n, seq)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (n, seq); -100 = no loss
    for i, (prompt, answer) in enumerate(rows):
        seq = prompt + answer
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(prompt) : len(seq)] = torch.tensor(answer)
    return ids, mask, labels


def supervised_pretrain(model, tokenizer, problems: list[Problem], steps: int, batch_size: int, lr: float,
                        seed: int, callback=None, every: int = 100) -> float:
    """Teacher-forced next-token training on the answers; returns seconds spent.

    `callback(step)` runs every `every` steps (e.g. to print the test accuracy).
    """
    ids, mask, labels = _sft_tensors(tokenizer, problems)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(ids), (batch_size,), generator=gen)
        loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if callback is not None and step % every == 0:
            model.eval()
            callback(step)
            model.train()
    model.eval()
    return time.perf_counter() - t0


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """The whole demo; returns (and writes to run_dir/summary.json) the before/after accuracies."""
    from ppox.llm.trainer import LLMPPOTrainer

    start = time.perf_counter()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = char_tokenizer()
    train, test = arithmetic_splits(cfg.num_test, 50_000, cfg.seed)
    model = tiny_gpt2(tokenizer, cfg.n_layer, cfg.n_embd, cfg.n_head)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tiny GPT-2: {n_params / 1e6:.2f}M parameters; {len(train)} training / {len(test)} test problems")

    sft_seconds = supervised_pretrain(model, tokenizer, train, cfg.sft_steps, cfg.sft_batch_size,
                                      cfg.sft_learning_rate, cfg.seed)
    acc_before, greedy_tps = greedy_accuracy(model, tokenizer, test)
    log(f"supervised: {cfg.sft_steps} steps of {cfg.sft_batch_size} in {sft_seconds:.0f}s "
        f"-> test exact match {acc_before:.1%}")
    model.save_pretrained(run_dir / "sft_model")
    tokenizer.save_pretrained(run_dir / "sft_model")

    ppo_cfg = cfg.ppo.replace(seed=cfg.seed, run_dir=str(run_dir), task="arithmetic", reward=cfg.reward,
                              torch_threads=cfg.torch_threads)
    trainer = LLMPPOTrainer(
        ppo_cfg, model, tokenizer, REWARDS[cfg.reward], [p.prompt for p in train],
        accuracy_fn=exact_match_reward,
        evaluate_fn=lambda policy: {"accuracy": greedy_accuracy(policy, tokenizer, test)[0]},
    )

    def show(r: dict) -> None:
        if r["iteration"] % 10 == 0 or r["iteration"] == ppo_cfg.total_steps:
            extra = f" test={r['eval_accuracy']:.1%}" if "eval_accuracy" in r else ""
            log(f"ppo step {r['iteration']:4d}: reward={r['reward_mean']:.3f} acc={r['accuracy']:.3f} "
                f"kl_ref={r['kl_ref']:.3f} clipfrac={r['clipfrac']:.3f} len={r['response_len_mean']:.2f}{extra}")

    t0 = time.perf_counter()
    history = trainer.train(run_dir, log=show)
    ppo_seconds = time.perf_counter() - t0
    acc_after = history[-1].get("eval_accuracy")
    if acc_after is None:
        acc_after = greedy_accuracy(trainer.policy, tokenizer, test)[0]

    def mean_of(key: str) -> float:
        return sum(r[key] for r in history) / len(history)

    summary = {
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "improvement": acc_after - acc_before,
        "test_problems": len(test),
        "wall_seconds": time.perf_counter() - start,
        "sft_seconds": sft_seconds,
        "ppo_seconds": ppo_seconds,
        "ppo_steps": ppo_cfg.total_steps,
        "gen_tokens_per_s": mean_of("gen_tokens_per_s"),
        "update_tokens_per_s": mean_of("update_tokens_per_s"),
        "greedy_eval_tokens_per_s": greedy_tps,
        "final_kl_ref": history[-1]["kl_ref"],
        "parameters": n_params,
        "seed": cfg.seed,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    log(f"test exact match: {acc_before:.1%} before PPO -> {acc_after:.1%} after "
        f"({summary['wall_seconds']:.0f}s total; generation {summary['gen_tokens_per_s']:.0f} tok/s, "
        f"PPO update {summary['update_tokens_per_s']:.0f} tok/s)")
    return summary
