"""Loading the policy, and the critic: a separate value model or a value head on the policy.

The policy is any transformers causal LM; the critic reads the last hidden state of a trunk and
maps it to one scalar per position.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ppox.errors import ConfigError, ModelFileError


def load_policy(path: str | Path):
    """(model, tokenizer) from a local save_pretrained directory; a clear error if it is not a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelFileError(f"{path} has no config.json: not a transformers model directory")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"cannot read the model config in {path}: {exc}") from None
    causal_archs = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = list(getattr(config, "architectures", None) or [])
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        archs and not any(a in causal_archs or a.endswith("ForCausalLM") for a in archs)
    ):
        what = ", ".join(archs) or f"model_type {config.model_type!r}"
        raise ModelFileError(f"{path} holds a {what}, not a causal language model (AutoModelForCausalLM)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"cannot load the causal LM or its tokenizer from {path}: {exc}") from None
    return model, tokenizer


def context_length(model) -> int | None:
    """The model's maximum sequence length, when its config states one."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def hidden_size(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"cannot tell the hidden size of {type(model).__name__} for the value head")


def _value_head(width: int) -> nn.Linear:
    # Zero init: every value starts at 0, so the first advantages are just the (whitened) returns.
    head = nn.Linear(width, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class ValueModel(nn.Module):
    """A separate critic: a deep copy of the policy's trunk (without the LM head) plus a scalar head."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        prefix = getattr(policy, "base_model_prefix", "")
        trunk = getattr(policy, prefix, None) if prefix else None
        # Models without a separate trunk attribute: copy the whole LM and read its hidden states.
        self.trunk = copy.deepcopy(trunk if isinstance(trunk, nn.Module) else policy)
        self.head = _value_head(hidden_size(policy))

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            output_hidden_states=True, use_cache=False,
        )
        return self.head(out.hidden_states[-1]).squeeze(-1)  # (batch, seq)


class ValueHead(nn.Module):
    """A shared critic: a scalar head on the policy's last hidden state (fed by the trainer)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.head = _value_head(hidden_size(policy))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).squeeze(-1)  # (batch, seq)


def apply_lora(policy, r: int, alpha: float):
    """Wrap the policy with LoRA adapters on all linear layers (needs the optional package peft)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("--lora-r needs the optional package peft: pip install 'ppox[lora]'") from None
    return get_peft_model(policy, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM"))
