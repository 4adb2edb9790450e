"""Offline demo: teach a tiny GPT-2 some arithmetic, then improve it with PPO.

1. A character-level tokenizer and arithmetic problems ("12+345=" -> "357<eos>"), with a
   held-out test split that training never sees.
2. Supervised learning of a tiny GPT-2 from scratch, deliberately stopped early: a modest
   greedy exact-match accuracy on the test split.
3. PPO with an exact-match (or partial-credit) reward from the SFT model, against a frozen copy
   of it as the KL reference; greedy test accuracy before and after is the result.

Everything is built locally: no network, no downloaded weights. `ppox llm demo --run-dir DIR`
writes DIR/summary.json, the SFT model (DIR/sft_model) and the PPO policy (DIR/policy). The PPO
run is an ordinary `ppox llm train` run on DIR/sft_model: stopped (Ctrl-C), it continues with
`ppox llm train --resume DIR`, or `ppox llm demo --resume DIR`, which also writes the demo's summary
(the accuracy before PPO is kept in DIR/demo.json).
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ppox.errors import ConfigError, ModelFileError
from ppox.io import RunDirLock, atomic_write_json, read_json
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
    # one batched call each: tokenising 50,000 problems one by one took seconds
    prompts = tokenizer([p.prompt for p in problems], add_special_tokens=False)["input_ids"]
    answers = tokenizer([p.answer for p in problems], add_special_tokens=False)["input_ids"]
    rows = [(prompt, [*answer, tokenizer.eos_token_id]) for prompt, answer in zip(prompts, answers, strict=True)]
    width = max(len(a) + len(b) for a, b in rows)
    pad = tokenizer.pad_token_id
    # padded Python lists, then one tensor each: filling 50,000 tensor rows one by one took seconds
    ids = torch.tensor([[*a, *b] + [pad] * (width - len(a) - len(b)) for a, b in rows])  # (n, seq)
    mask = torch.tensor([[1] * (len(a) + len(b)) + [0] * (width - len(a) - len(b)) for a, b in rows])  # (n, seq)
    labels = torch.tensor([[-100] * len(a) + b + [-100] * (width - len(a) - len(b)) for a, b in rows])  # -100 = no loss
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


DEMO_RECORD = "demo.json"


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """The whole demo; returns (and writes to run_dir/summary.json) the before/after accuracies.

    Stopped during PPO (SIGINT/SIGTERM), it returns {"interrupted": True, ...} after the trainer's
    checkpoint; `finish_demo` on the resumed trainer completes it.
    """
    from ppox.llm.models import quiet_transformers
    from ppox.llm.trainer import LLMPPOTrainer

    start = time.perf_counter()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    # the trainer takes this lock over and releases it when PPO ends
    with quiet_transformers(), RunDirLock(run_dir) as lock:
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
        sft_dir = run_dir / "sft_model"
        model.save_pretrained(sft_dir)
        tokenizer.save_pretrained(sft_dir)
        record = {"accuracy_before": acc_before, "sft_seconds": sft_seconds, "greedy_eval_tokens_per_s": greedy_tps,
                  "parameters": n_params, "seed": cfg.seed, "test_problems": len(test),
                  "sft_wall_seconds": time.perf_counter() - start}
        atomic_write_json(run_dir / DEMO_RECORD, record)

        # Everything `ppox llm train --resume` needs to rebuild this run is in the config: the model it
        # starts from (absolute, so the command works from any directory), the task and its test split.
        ppo_cfg = cfg.ppo.replace(seed=cfg.seed, run_dir=str(run_dir), task="arithmetic", reward=cfg.reward,
                                  torch_threads=cfg.torch_threads, num_test=cfg.num_test,
                                  model_path=str(sft_dir.resolve()), prompts_file=None, reward_model_path=None)
        trainer = LLMPPOTrainer(
            ppo_cfg, model, tokenizer, REWARDS[cfg.reward], [p.prompt for p in train],
            accuracy_fn=exact_match_reward,
            evaluate_fn=lambda policy: {"accuracy": greedy_accuracy(policy, tokenizer, test)[0]},
        )
        trainer.run_dir_lock = lock
        return finish_demo(trainer, record, log, start)


def read_demo_record(run_dir: str | Path) -> dict:
    """What the demo measured before PPO (DIR/demo.json); a clear error if DIR is not a demo's run."""
    path = Path(run_dir) / DEMO_RECORD
    if not path.is_file():
        raise ModelFileError(f"{run_dir} has no {DEMO_RECORD}: not a run of `ppox llm demo` (continue an ordinary "
                             f"run with `ppox llm train --resume {run_dir}`)")
    record = read_json(path, "demo record")
    if not isinstance(record.get("accuracy_before"), int | float):
        raise ModelFileError(f"{path} has no accuracy_before: a damaged demo record")
    return record


def finish_demo(trainer, record: dict, log=print, start: float | None = None) -> dict:
    """PPO (from the trainer's current step: 0, or a resumed checkpoint) and the demo's summary.

    `record` is what run_demo measured before PPO (read_demo_record on resume).
    """
    from ppox.llm.models import quiet_transformers
    from ppox.llm.tasks import arithmetic_splits

    start = time.perf_counter() if start is None else start
    ppo_cfg = trainer.config
    run_dir = Path(ppo_cfg.run_dir)
    tokenizer = trainer.tokenizer
    _, test = arithmetic_splits(ppo_cfg.num_test, 0, ppo_cfg.seed)

    def show(r: dict) -> None:
        if r["iteration"] % 10 == 0 or r["iteration"] == ppo_cfg.total_steps:
            extra = f" test={r['eval_accuracy']:.1%}" if "eval_accuracy" in r else ""
            log(f"ppo step {r['iteration']:4d}: reward={r['reward_mean']:.3f} acc={r['accuracy']:.3f} "
                f"kl_ref={r['kl_ref']:.3f} clipfrac={r['clipfrac']:.3f} len={r['response_len_mean']:.2f}{extra}")

    t0 = time.perf_counter()
    with quiet_transformers():
        history = trainer.learn(run_dir, log=show)
    ppo_seconds = time.perf_counter() - t0
    if trainer.interrupted:  # the trainer wrote a checkpoint and printed how to continue
        print(f"or finish the demo, with its summary: `ppox llm demo --resume {run_dir}`", file=sys.stderr)
        return {"interrupted": True, "ppo_steps_done": trainer.step_count}
    acc_before = record["accuracy_before"]
    acc_after = history[-1].get("eval_accuracy") if history else None
    if acc_after is None:
        acc_after = greedy_accuracy(trainer.policy, tokenizer, test)[0]

    def mean_of(key: str) -> float:
        values = [r[key] for r in history if key in r]
        return sum(values) / max(len(values), 1)

    summary = {
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "improvement": acc_after - acc_before,
        "test_problems": len(test),
        "wall_seconds": time.perf_counter() - start,
        "sft_seconds": record.get("sft_seconds"),
        "ppo_seconds": ppo_seconds,
        "ppo_steps": ppo_cfg.total_steps,
        "gen_tokens_per_s": mean_of("gen_tokens_per_s"),
        "update_tokens_per_s": mean_of("update_tokens_per_s"),
        "greedy_eval_tokens_per_s": record.get("greedy_eval_tokens_per_s"),
        "final_kl_ref": history[-1]["kl_ref"] if history else None,
        "parameters": record.get("parameters"),
        "seed": ppo_cfg.seed,
        "interrupted": False,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    log(f"test exact match: {acc_before:.1%} before PPO -> {acc_after:.1%} after "
        f"({summary['wall_seconds']:.0f}s total; generation {summary['gen_tokens_per_s']:.0f} tok/s, "
        f"PPO update {summary['update_tokens_per_s']:.0f} tok/s)")
    return summary
