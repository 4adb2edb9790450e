"""Token-level PPO for Hugging Face causal language models, on the shared ppox.core.

    from ppox.llm import LLMPPOConfig, LLMPPOTrainer
    trainer = LLMPPOTrainer(LLMPPOConfig(...), model, tokenizer, reward_fn, prompts)
    trainer.learn("runs/my-run")

`reward_fn(prompts, completions) -> list[float]` is any Python function (verifiable rewards) or a
`RewardModel` (an AutoModelForSequenceClassification directory).
"""

from ppox.llm.config import LLMPPOConfig
from ppox.llm.models import load_policy
from ppox.llm.reward import RewardError, RewardModel
from ppox.llm.trainer import LLMPPOTrainer

__all__ = ["LLMPPOConfig", "LLMPPOTrainer", "RewardError", "RewardModel", "load_policy"]
