"""LLMPPOConfig: every hyperparameter of token-level PPO on a causal language model.

`ppox llm train --help` is generated from this dataclass: each field's docstring is its help
text and its default the flag's default. Validation runs at construction (__post_init__), so a
bad value fails before any model is loaded. The objective's fields (clipping, value loss, entropy,
KL penalty, advantages) come from ppox.core.objective.ObjectiveConfig; the LLM trainer re-declares
only the defaults it does differently.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass
from typing import Any, Literal

from ppox.core.objective import KLEstimator, ObjectiveConfig, accepts_deprecated_names, rename_deprecated
from ppox.errors import ConfigError


@accepts_deprecated_names
@dataclass
class LLMPPOConfig(ObjectiveConfig):
    """Configuration of a PPO run on a causal language model."""

    # what to train, on what
    model_path: str | None = None
    """Local directory of the policy: any transformers AutoModelForCausalLM with its tokenizer
    (e.g. the sft_model directory written by `ppox llm demo`)."""
    task: Literal["arithmetic", "none"] = "arithmetic"
    """Built-in task giving prompts and a verifiable reward; 'none' needs --prompts-file and
    --reward-model-path."""
    reward: Literal["exact", "partial"] = "exact"
    """Reward of the arithmetic task: 'exact' (1 for the right answer, else 0) or 'partial'
    (exact match = 1, otherwise up to 0.5 for correct digits)."""
    prompts_file: str | None = None
    """Prompt dataset: a .jsonl file with a 'prompt' field per line, or a text file with one prompt
    per line. Overrides the task's prompts."""
    reward_model_path: str | None = None
    """Local directory of a reward model (AutoModelForSequenceClassification, score = logit 0);
    replaces the task's reward."""
    run_dir: str = "runs/llm"
    """Directory for metrics.jsonl, TensorBoard events, config.json and the trained policy."""
    seed: int = 1
    """Seed of sampling, the value head initialisation and minibatch shuffling."""
    device: str = "cpu"
    """Torch device ('cpu', 'cuda', 'cuda:1', ...)."""
    torch_threads: int = 2
    """CPU threads for torch (torch.set_num_threads); 0 leaves torch's default."""

    # rollout
    total_steps: int = 100
    """PPO steps: each samples batch_size completions and runs the PPO epochs on them."""
    batch_size: int = 64
    """Prompts (and completions) per rollout."""
    max_new_tokens: int = 32
    """Longest completion; generation stops earlier at the end-of-sequence token."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are those of the tempered policy."""
    top_p: float = 1.0
    """Nucleus-sampling mass (1.0 = off)."""
    missing_eos_penalty: float | None = None
    """Subtracted from the task reward of a completion that hit max_new_tokens without an
    end-of-sequence token; None = no penalty."""

    # optimisation
    learning_rate: float = 1e-5
    """AdamW learning rate of the policy."""
    vf_learning_rate: float | None = None
    """AdamW learning rate of the critic; None = learning_rate."""
    update_epochs: int = 4
    """PPO epochs over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch (one optimizer step each); must divide batch_size."""
    grad_accum_steps: int = 1
    """Micro-batches per minibatch whose gradients are summed (memory only: same result)."""
    max_grad_norm: float | None = 1.0
    """Global gradient-norm clip; None = no clipping."""
    normalize_reward: bool = False
    """Standardise the task rewards over the batch before adding the KL penalty."""

    # objective: ObjectiveConfig's fields; these defaults differ from its (CleanRL's) ones
    gamma: float = 1.0
    """Discount over response tokens (1.0: the task reward counts fully at every token)."""
    vf_clip_coef: float | None = 0.2
    """Value clip range; None = clip_coef."""
    vf_coef: float = 0.1
    """Value-loss coefficient."""
    ent_coef: float = 0.0
    """Entropy-bonus coefficient."""

    # KL to the frozen reference model
    kl_penalty: Literal["reward", "loss", "none"] = "reward"
    """Where the KL to the reference model acts: 'reward' folds -kl_coef * KL into every token's
    reward (InstructGPT), 'loss' adds kl_coef * KL to the loss, 'none' ignores it."""
    kl_estimator: KLEstimator | None = None
    """Per-token KL estimator; None = k1 for the reward penalty, k3 for the loss term."""
    kl_coef: float = 0.05
    """(Initial) KL coefficient beta."""
    kl_target: float | None = None
    """Target KL to the reference per completion (nats); set = adaptive beta (Ziegler et al.),
    None = fixed beta."""
    kl_horizon: int = 10_000
    """Horizon (in completions) of the adaptive KL controller."""

    # critic
    critic: Literal["separate", "shared"] = "separate"
    """'separate': a value model = a copy of the policy's trunk with a scalar head;
    'shared': a scalar value head on the policy's own trunk."""

    # LoRA (needs the optional package peft)
    lora_r: int = 0
    """LoRA rank of the policy's adapters on all linear layers; 0 = full fine-tuning. With LoRA the
    reference model is the policy's frozen base (adapters disabled), not a copy; needs ppox[lora]."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha (the adapters' update is scaled by alpha / r)."""

    # scaling out (torchrun)
    fsdp: bool = False
    """Shard the policy, critic and reference over the torchrun processes with PyTorch FSDP
    (fully_shard), for models that don't fit on one device; off = every process holds the whole
    models and gradients are all-reduced (DDP-style). Needs a torchrun launch."""

    # logging and evaluation
    eval_every: int = 0
    """Evaluate greedy exact-match accuracy on the task's test split every N steps; 0 = only at the end."""
    num_test: int = 500
    """Held-out test problems of the arithmetic task."""
    tensorboard: bool = True
    """Also write TensorBoard event files."""

    # checkpoints (`ppox llm train --resume RUN_DIR` continues from the latest)
    checkpoint_every: int = 10
    """Write a resumable checkpoint (policy weights or LoRA adapters, critic, optimizer, KL
    controller, step, RNG states, metrics so far) to RUN_DIR/checkpoints every N steps and at the
    end; 0 = only at the end. Atomic: a kill mid-write leaves the previous checkpoint valid."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep (older ones are deleted once a newer one is complete)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def micro_batch_size(self) -> int:
        return self.minibatch_size // self.grad_accum_steps

    def validate(self) -> None:
        for name in ("total_steps", "batch_size", "max_new_tokens", "update_epochs", "num_minibatches",
                     "grad_accum_steps", "kl_horizon", "num_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        for name in ("learning_rate", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("vf_learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value}")
        for name in ("eval_every", "torch_threads", "lora_r", "checkpoint_every"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                f"num_minibatches ({self.num_minibatches}) must divide batch_size ({self.batch_size})"
            )
        if self.minibatch_size % self.grad_accum_steps:
            raise ConfigError(
                f"grad_accum_steps ({self.grad_accum_steps}) must divide the minibatch size ({self.minibatch_size})"
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        super().validate()  # the objective's fields
        if self.critic not in ("separate", "shared"):
            raise ConfigError(f"critic must be separate or shared, got {self.critic!r}")
        if self.fsdp and self.lora_r:
            raise ConfigError("fsdp with LoRA (lora_r > 0) is not supported yet: use one or the other")
        if self.lora_r and importlib.util.find_spec("peft") is None:
            raise ConfigError("lora_r > 0 needs the optional package peft: pip install 'ppox[lora]'")

    def update_objective(self) -> ObjectiveConfig:
        """The objective ppox.core's update applies to each minibatch. The trainer itself normalises the
        advantages (once, over the whole batch) and applies the KL to the reference (in the rewards, or
        as the forward's extra_loss), so the update does neither again; its logged kl_penalty statistic
        is then the k3 estimate of the KL to the rollout policy."""
        return dataclasses.replace(super().update_objective(), norm_adv=False, kl_penalty="none", kl_estimator="k3")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> LLMPPOConfig:
        return dataclasses.replace(self, **rename_deprecated(changes))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
