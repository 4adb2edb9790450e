"""Token-level PPO on a causal language model, on top of ppox.core.

One step = sample a completion per prompt -> score it -> per-token rewards (task reward at the
last token, optional KL penalty to the frozen reference at every token) -> GAE over the response
tokens -> `ppox.core.update.ppo_update` with the response mask. The math lives in ppox.core;
this file only arranges tensors.
"""

from __future__ import annotations

import copy
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ppox.core import AdaptiveKLController, aggregate, gae, kl_estimate, normalize
from ppox.core.update import PolicyOutput, ppo_update
from ppox.distributed import init_device
from ppox.errors import PPOXError
from ppox.io import RunDirLock, save_tensors
from ppox.llm import fsdp
from ppox.llm.checkpoint import load_checkpoint, save_checkpoint
from ppox.llm.config import LLMPPOConfig
from ppox.llm.data import PromptBatches, check_prompts
from ppox.llm.models import ValueHead, ValueModel, apply_lora, context_length
from ppox.llm.reward import RewardFn, score
from ppox.llm.rollout import policy_forward, position_ids_from, response_mask, sample, tokenize_prompts
from ppox.run_context import RunContext, hold_run_dir, mean_over_ranks, weight_hashes
from ppox.runs import find_checkpoint

Batch = dict[str, torch.Tensor]
_train_warned = False  # LLMPPOTrainer.train (deprecated) warns once per process


class LLMPPOTrainer:
    """PPO for a transformers causal LM `policy` on `prompts`, rewarded by `reward_fn(prompts, completions)`.

    The reference model is a frozen copy of the policy as given (or `ref_model`); with LoRA
    (`config.lora_r > 0`) it is the policy's own base weights with the adapters disabled. Dropout is kept
    off throughout (models stay in eval mode): the rollout's log-probs must be reproduced exactly
    by the update's forward pass, so that the ratio is 1 at the first minibatch.
    """

    def __init__(
        self,
        config: LLMPPOConfig,
        policy,
        tokenizer,
        reward_fn: RewardFn,
        prompts: Sequence[str],
        *,
        ref_model=None,
        accuracy_fn: RewardFn | None = None,
        evaluate_fn: Callable[[object], dict[str, float]] | None = None,
    ) -> None:
        cfg = self.config = config
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        # torchrun: one process per rank, gradients averaged by the shared update loop
        self.device, self.collective = init_device(cfg.device)
        self._reduce_sum = self.collective.sum_ if self.collective.enabled else None
        self.prompts = check_prompts(prompts)
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        self.accuracy_fn = accuracy_fn
        self.evaluate_fn = evaluate_fn
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise PPOXError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
        tokenizer.pad_token_id = self.pad_token_id

        policy = policy.to(self.device)
        self.context = context_length(policy)
        # With LoRA the reference is the policy's own frozen base (adapters disabled): no second copy.
        self.ref = ref_model if ref_model is not None else None if cfg.lora_r else copy.deepcopy(policy)
        if self.ref is not None:
            self.ref.to(self.device).eval().requires_grad_(False)
        # The critic is built before LoRA wraps the policy, so a separate critic copies the plain trunk.
        self.critic = ValueModel(policy) if cfg.critic == "separate" else ValueHead(policy)
        self.critic.to(self.device).eval()
        self.policy = apply_lora(policy, cfg.lora_r, cfg.lora_alpha) if cfg.lora_r else policy
        self.policy.eval()
        if self.collective.enabled:  # rank 0's critic init everywhere; distinct samples per rank
            self.collective.broadcast_module(self.policy)
            self.collective.broadcast_module(self.critic)
            torch.manual_seed(cfg.seed + self.collective.rank)
        # --fsdp: each rank keeps 1/N of policy, critic and reference (before the optimizer sees the params)
        self.sharded = fsdp.shard_models(cfg.fsdp, self.collective, self.policy, self.critic, self.ref)
        policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        self.params = policy_params + critic_params
        self.optimizer = torch.optim.AdamW(
            [
                {"params": policy_params, "lr": cfg.learning_rate},
                {"params": critic_params, "lr": cfg.vf_learning_rate or cfg.learning_rate},
            ],
            weight_decay=0.0,
        )
        horizon = cfg.kl_horizon if cfg.kl_target is not None else None
        self.kl_controller = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, horizon)
        self.objective = cfg.update_objective()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._batches = PromptBatches(self.prompts, cfg.batch_size, cfg.seed + self.collective.rank)
        self.step_count = 0
        self.global_step = 0  # completions sampled so far
        self.history: list[dict] = []  # metrics of every step so far (restored by resume())
        self.interrupted = False  # the last learn() stopped early on SIGINT/SIGTERM (after a checkpoint)
        # Main rank: the lock on the run directory, held from resume() or learn() until learn() returns.
        # A caller that locked the directory itself (the demo) may hand its lock over here.
        self.run_dir_lock: RunDirLock | None = None

    # ---------------------------------------------------------------- forward passes
    def _values(self, input_ids, attention_mask, prompt_width: int, hidden) -> torch.Tensor:
        if isinstance(self.critic, ValueHead):
            return self.critic(hidden)  # (batch, R)
        values = self.critic(input_ids, attention_mask, position_ids_from(attention_mask))
        return values[:, prompt_width - 1 : -1]  # (batch, R): value of the state before each response token

    def _ref_logprobs(self, input_ids, attention_mask, prompt_width: int) -> torch.Tensor:
        if self.ref is not None:
            return policy_forward(self.ref, input_ids, attention_mask, prompt_width, self.config.temperature)[0]
        with self.policy.disable_adapter():  # LoRA: the frozen base weights are the reference
            return policy_forward(self.policy, input_ids, attention_mask, prompt_width, self.config.temperature)[0]

    def forward(self, mb: Batch) -> PolicyOutput:
        """Current policy and critic on a minibatch of the rollout (the `forward` of ppo_update)."""
        prompt_width = mb["input_ids"].shape[1] - mb["mask"].shape[1]
        shared = isinstance(self.critic, ValueHead)
        logprobs, entropy, hidden = policy_forward(
            self.policy, mb["input_ids"], mb["attention_mask"], prompt_width, self.config.temperature, shared
        )
        values = self._values(mb["input_ids"], mb["attention_mask"], prompt_width, hidden)
        # Zero every output outside the response mask (as the rollout does): the ratio there is
        # exp(0) = 1, so no padded position can overflow into an inf * 0 = NaN in the loss.
        invalid = ~mb["mask"]
        logprobs, entropy, values = (x.masked_fill(invalid, 0.0) for x in (logprobs, entropy, values))
        extra = None
        if self.config.kl_penalty == "loss":
            # KL(pi || ref) sampled from pi: log r = log ref - log pi, differentiated through log pi.
            kl = kl_estimate(mb["ref_logprobs"] - logprobs, self.config.resolved_kl_estimator)
            extra = self.kl_controller.coef * aggregate(kl, mb["mask"], self.config.loss_agg_mode)
        return PolicyOutput(logprobs=logprobs, entropy=entropy, values=values, extra_loss=extra)

    # ---------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> tuple[Batch, dict[str, float], list[str]]:
        """Sample, score and evaluate one batch; returns (tensors for ppo_update, stats, completions)."""
        cfg = self.config
        prompt_ids, prompt_mask = tokenize_prompts(
            self.tokenizer, prompts, cfg.max_new_tokens, self.context, self.device
        )
        t0 = time.perf_counter()
        responses = sample(
            self.policy, prompt_ids, prompt_mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_p=cfg.top_p, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
        )  # (batch, R)
        gen_seconds = time.perf_counter() - t0
        mask = response_mask(responses, self.eos_token_id)  # (batch, R) bool
        input_ids = torch.cat([prompt_ids, responses], dim=1)  # (batch, P + R)
        attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)  # (batch, P + R)
        prompt_width = prompt_ids.shape[1]

        # Recompute log-probs with the same forward pass (and micro-batch shape) as the update,
        # rather than trusting generate's scores: then the first ratio is exactly 1.
        logprobs, ref_logprobs, values, entropy = [], [], [], []
        shared = isinstance(self.critic, ValueHead)
        for i in range(0, len(prompts), cfg.micro_batch_size):
            ids, am = input_ids[i : i + cfg.micro_batch_size], attention_mask[i : i + cfg.micro_batch_size]
            lp, ent, hidden = policy_forward(self.policy, ids, am, prompt_width, cfg.temperature, shared)
            ref_lp = self._ref_logprobs(ids, am, prompt_width)
            logprobs.append(lp)
            entropy.append(ent)
            ref_logprobs.append(ref_lp)
            values.append(self._values(ids, am, prompt_width, hidden))
        logprobs, ref_logprobs = torch.cat(logprobs), torch.cat(ref_logprobs)  # (batch, R)
        values, entropy = torch.cat(values), torch.cat(entropy)  # (batch, R)
        maskf = mask.float()
        logprobs, ref_logprobs, values = (x.masked_fill(~mask, 0.0) for x in (logprobs, ref_logprobs, values))

        lengths = mask.sum(-1)  # (batch,)
        completions = [
            self.tokenizer.decode(responses[i, : lengths[i]].tolist(), skip_special_tokens=True)
            for i in range(len(prompts))
        ]
        scores = score(self.reward_fn, prompts, completions).to(self.device)  # (batch,)
        task_reward = (
            normalize(scores, all_reduce_sum=self._reduce_sum) if cfg.normalize_reward and len(prompts) > 1
            else scores.clone()
        )
        hit_eos = (responses == self.eos_token_id).any(-1)  # (batch,) False: cut at max_new_tokens
        if self.eos_token_id is None:
            hit_eos = torch.ones_like(hit_eos)
        if cfg.missing_eos_penalty is not None:
            task_reward = task_reward - cfg.missing_eos_penalty * (~hit_eos).float()

        # Per-token rewards (batch, R): -beta * KL at every token, the task reward at the last one.
        kl = kl_estimate(ref_logprobs - logprobs, cfg.resolved_kl_estimator) * maskf  # (batch, R)
        rewards = -self.kl_controller.coef * kl if cfg.kl_penalty == "reward" else torch.zeros_like(kl)
        rewards[torch.arange(len(prompts), device=self.device), lengths - 1] += task_reward

        # GAE over response tokens; the episode ends after the last valid token (time-first for the core).
        next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)  # (batch, R)
        next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1) * next_mask
        done = ~next_mask
        advantages, returns = gae(
            rewards.T, values.T, next_values.T, done.T, done.T, cfg.gamma, cfg.gae_lambda
        )
        advantages, returns = advantages.T * maskf, returns.T * maskf  # (batch, R)
        if cfg.norm_adv:  # over the valid tokens of all ranks' batches
            advantages = normalize(advantages, mask, all_reduce_sum=self._reduce_sum)

        batch = {
            "input_ids": input_ids, "attention_mask": attention_mask, "mask": mask,
            "logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values,
            "advantages": advantages, "returns": returns,
        }
        num_tokens = float(maskf.sum())
        kl_ref_k1 = ((logprobs - ref_logprobs) * maskf).sum(-1)  # (batch,) per-completion KL estimate
        stats = {
            "reward_mean": float(scores.mean()),
            "reward_std": float(scores.std()) if len(prompts) > 1 else 0.0,
            "kl_ref": float(kl_ref_k1.mean()),
            "kl_ref_token": float(aggregate(kl_estimate(ref_logprobs - logprobs, "k3"), mask)),
            "rollout_entropy": float(aggregate(entropy, mask)),
            "response_len_mean": float(lengths.float().mean()),
            "response_len_max": int(lengths.max()),
            "eos_rate": float(hit_eos.float().mean()),
            "value_mean": float(aggregate(values, mask)),
            "return_mean": float(aggregate(returns, mask)),
            "gen_tokens_per_s": num_tokens / max(gen_seconds, 1e-9),
            "gen_seconds": gen_seconds,
        }
        if self.accuracy_fn is not None:
            stats["accuracy"] = float(score(self.accuracy_fn, prompts, completions).mean())
        return batch, stats, completions

    # ---------------------------------------------------------------- training
    def step(self, prompts: list[str] | None = None) -> dict[str, float]:
        """One PPO step on `prompts` (default: the next batch of the dataset); returns its metrics."""
        cfg = self.config
        prompts = prompts if prompts is not None else next(self._batches)
        t0 = time.perf_counter()
        batch, stats, _ = self.rollout(prompts)
        t1 = time.perf_counter()
        result = ppo_update(
            batch, self.forward, self.optimizer, self.params, self.objective,
            update_epochs=cfg.update_epochs, num_minibatches=cfg.num_minibatches,
            max_grad_norm=cfg.max_grad_norm, target_kl=cfg.target_kl,
            grad_accum_steps=cfg.grad_accum_steps, generator=self.generator,
            collective=self.collective if self.collective.enabled else None, gradients_synced=self.sharded,
        )
        update_seconds = time.perf_counter() - t1
        self.step_count += 1
        self.global_step += len(prompts) * self.collective.world_size
        if self.collective.enabled:  # logged statistics and the KL controller's input are global
            stats = mean_over_ranks(self.collective, stats)
            result.stats.update(mean_over_ranks(self.collective, result.stats))
        kl_coef = self.kl_controller.coef  # the coefficient this step used
        self.kl_controller.update(stats["kl_ref"], n_steps=len(prompts) * self.collective.world_size)
        num_tokens = float(batch["mask"].sum())
        return {
            "global_step": self.global_step,
            "iteration": self.step_count,
            **stats,
            **result.stats,
            "kl_coef": kl_coef,
            "epochs_run": result.epochs_run,
            "skipped_updates": result.skipped_updates,
            "update_tokens_per_s": num_tokens * result.epochs_run / max(update_seconds, 1e-9),
            "update_seconds": update_seconds,
            "step_seconds": time.perf_counter() - t0,
        }

    def resume(self, run_dir: str | Path) -> Path:
        """Load RUN_DIR's latest checkpoint (every rank); the next learn(run_dir) continues the run from there.

        With --fsdp every rank reads the full tensors and keeps its shard; a checkpoint of a sharded
        run resumes without FSDP and vice versa (the files are the same).
        """
        ckpt = find_checkpoint(run_dir)
        if self.collective.is_main:  # loading discards a killed run's later checkpoints: nobody else may write
            self.run_dir_lock = hold_run_dir(self.run_dir_lock, Path(run_dir))
        self.history = load_checkpoint(self, ckpt)
        return ckpt

    def state_dict(self) -> dict[str, Any]:
        """This rank's training state besides weights and optimizer (ppox.llm.checkpoint gathers those across
        ranks): step, completions, KL controller, RNG states (torch, CUDA, minibatch shuffle, prompt sampler)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": self.generator.get_state(),
                               "prompts": self._batches.state_dict()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"step": self.step_count, "global_step": self.global_step,
                "kl_controller": self.kl_controller.state_dict(), "rng": rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state_dict(). An rng without "torch" (another number of processes wrote it) starts fresh,
        distinct random streams per rank from the step: the run stays valid, not bit-exact."""
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.step_count = int(state["step"])
        self.global_step = int(state["global_step"])
        rng = state["rng"]  # RNG states last: building the trainer consumed random numbers
        self.generator.set_state(rng["shuffle"])
        if rng.get("torch") is None:
            seed = self.config.seed + self.collective.rank + 7919 * self.step_count
            torch.manual_seed(seed)
            self._batches = PromptBatches(self.prompts, self.config.batch_size, seed)
            return
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self._batches.load_state_dict(rng["prompts"])

    def learn(self, run_dir: str | Path | None = None, log: Callable[[dict], None] | None = None) -> list[dict]:
        """Train up to step config.total_steps, logging and checkpointing; saves the policy to run_dir/policy.

        Continues from the current step (after resume()); returns the metrics of every step so far.
        SIGINT/SIGTERM (on any rank, with torchrun) stop the run after the current step, with a
        checkpoint: `self.interrupted` is then True and `resume(run_dir)` continues it. A second
        signal raises KeyboardInterrupt at once (the last checkpoint on disk stays valid).
        """
        cfg = self.config
        run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
        lock, self.run_dir_lock = self.run_dir_lock, None  # the run context holds it from here on
        if self.collective.is_main:  # creates the directory; refuses a second process writing there
            lock = hold_run_dir(lock, run_dir)
        self.interrupted = False
        run = RunContext(run_dir, self.collective, lock, fresh=self.step_count == 0, config=cfg.to_dict(),
                         tensorboard=cfg.tensorboard, checkpoint_every=cfg.checkpoint_every,
                         resume_command="ppox llm train --resume", catch_interrupt=False)
        try:
            with run:
                self._train_steps(run, self.history, log)
            self._finish(run, self.history)
        finally:
            run.release()
        return self.history

    def train(self, run_dir: str | Path | None = None, log: Callable[[dict], None] | None = None) -> list[dict]:
        """Deprecated name of learn() (the gymnasium trainer's name), kept for one release."""
        global _train_warned
        if not _train_warned:
            _train_warned = True
            warnings.warn("LLMPPOTrainer.train() is renamed learn(); train() goes in the next release",
                          DeprecationWarning, stacklevel=2)
            print("warning: LLMPPOTrainer.train() is deprecated: call learn()", file=sys.stderr)
        return self.learn(run_dir, log)

    def _train_steps(self, run: RunContext, history: list[dict], log: Callable[[dict], None] | None) -> None:
        cfg = self.config
        is_main = self.collective.is_main
        for step in range(self.step_count + 1, cfg.total_steps + 1):
            record = self.step()
            if (is_main or self.sharded) and self.evaluate_fn is not None and (  # FSDP: all ranks run it
                step == cfg.total_steps or (cfg.eval_every and step % cfg.eval_every == 0)
            ):
                record.update({f"eval_{k}": v for k, v in self.evaluate_fn(self.policy).items()})
            run.log(record, final=step == cfg.total_steps)
            history.append(record)
            if log is not None and is_main:
                log(record)
            stopping = run.stop_requested()
            if stopping or run.checkpoint_due(step, cfg.total_steps):
                save_checkpoint(self, run.run_dir, history)
            if stopping and step < cfg.total_steps:
                self.interrupted = True
                if is_main:
                    print(f"{stopping}: stopped after step {step} of {cfg.total_steps} with a checkpoint; "
                          f"continue with `ppox llm train --resume {shlex.quote(str(run.run_dir))}`", file=sys.stderr)
                return

    def _finish(self, run: RunContext, history: list[dict]) -> None:
        """After the last step (or a stop): the policy, critic and summary of the run so far."""
        is_main = self.collective.is_main
        # every rank must hold the same weights: compare hashes of all ranks' policy and critic
        # (FSDP: each rank holds different shards by design, so there is nothing to compare)
        self.weights_identical_across_ranks = None
        if not self.sharded:
            hashes = weight_hashes(self.collective, torch.nn.ModuleList([self.policy, self.critic]))
            self.weights_identical_across_ranks = len(set(hashes)) == 1
        self.save(run.run_dir / "policy")  # rank 0 writes (FSDP: every rank helps gather the weights)
        critic_state = fsdp.full_state_dict(self.critic) if self.sharded else self.critic.state_dict()
        if is_main:
            save_tensors(run.run_dir / "critic.safetensors", critic_state)
        run.write_summary({
                "steps": self.step_count, "completions": self.global_step,
                "world_size": self.collective.world_size,
                "weights_identical_across_ranks": self.weights_identical_across_ranks,
                "interrupted": self.interrupted,
                **{k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, int | float)},
            })
        self.collective.barrier()

    def save(self, path: str | Path) -> None:
        """An ordinary save_pretrained directory (weights + tokenizer) that plain transformers loads.

        Rank 0 writes it; with FSDP every rank must call this (the full weights are gathered).
        """
        if self.sharded:
            state = fsdp.full_state_dict(self.policy)  # the whole model, on rank 0 only
            if self.collective.is_main:
                self.policy.save_pretrained(path, state_dict=state)
                self.tokenizer.save_pretrained(path)
            return
        if not self.collective.is_main:
            return
        model = self.policy
        if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into plain weights
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

