"""Rewards for completions: a Python function (verifiable rewards) or a reward model.

Either way the trainer sees `reward(prompts, completions) -> list[float]`; `score` calls it and
turns every way it can go wrong into a PPOXError naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ppox.errors import ModelFileError, PPOXError

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


class RewardError(PPOXError):
    """A reward function that raised or returned something unusable."""


def score(reward_fn: RewardFn, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """Call the reward and check its answer: one finite number per completion. Returns (batch,)."""
    name = getattr(reward_fn, "__name__", type(reward_fn).__name__)
    try:
        rewards = reward_fn(prompts, completions)
    except PPOXError:
        raise
    except Exception as exc:  # the user's code: report it as a reward problem, not a trainer crash
        raise RewardError(f"reward function {name} raised {type(exc).__name__}: {exc}") from exc
    try:
        values = [float(r) for r in rewards]
    except (TypeError, ValueError) as exc:
        raise RewardError(f"reward function {name} must return a list of numbers ({exc})") from None
    if len(values) != len(completions):
        raise RewardError(
            f"reward function {name} returned {len(values)} rewards for {len(completions)} completions"
        )
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise RewardError(
                f"reward function {name} returned a non-finite reward ({v}) for completion {i} "
                f"{completions[i][:40]!r} of prompt {prompts[i][:40]!r}"
            )
    return torch.tensor(values, dtype=torch.float32)


class RewardModel:
    """A sequence-classification model as a reward: score = logit 0 of prompt + completion.

    Loaded from a local directory (config, weights and tokenizer); runs under no_grad.
    """

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ppox.distributed import resolve_device
        from ppox.llm.models import load_checked, read_model_config

        dev = resolve_device(device)
        path = Path(path)
        config = read_model_config(path, "reward model")
        archs = list(getattr(config, "architectures", None) or [])
        # A causal LM would load with a freshly initialised score head: a random reward, silently.
        if not archs or not any(a.endswith("ForSequenceClassification") for a in archs):
            what = ", ".join(archs) or f"model_type {config.model_type!r} with no architectures"
            raise ModelFileError(f"reward model {path} holds a {what}, not a sequence-classification model "
                                 "(AutoModelForSequenceClassification with a trained score head)")
        self.model = load_checked(path, AutoModelForSequenceClassification, "reward model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFileError(f"cannot load the reward model's tokenizer from {path}: {first}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(dev).eval().requires_grad_(False)
        self.device = dev
        self.batch_size = batch_size
        self.__name__ = f"RewardModel({path.name})"

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True)
            logits = self.model(**enc.to(self.device)).logits  # (batch, num_labels)
            scores.extend(logits[:, 0].float().tolist())
        return scores
