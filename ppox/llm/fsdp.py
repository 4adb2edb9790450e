"""FSDP for the LLM trainer (`--fsdp`): PyTorch's own fully_shard (FSDP2) for models that don't fit.

Under torchrun with N >= 2 processes, `--fsdp` shards the policy, the critic and the frozen
reference over the processes: every rank stores 1/N of each parameter, of its gradient and of its
Adam moments. Each transformer block (the model's `_no_split_modules` classes, e.g. GPT2Block) is
its own FSDP unit, all-gathered just before its forward/backward and freed after; the rest of the
model (embeddings, final norm, LM head) is the root unit. Gradients are averaged by FSDP's
reduce-scatter inside backward, so the update loop does not all-reduce them itself
(`ppo_update(..., gradients_synced=True)`); gradient clipping sees the global norm (the gradients
are DTensors and `clip_grad_norm_` reduces over the shards).

Generation: `generate` runs the sharded model token by token, all-gathering each block per step, with
transformers' `synced_gpus` (on by the marker set in `shard`), so a rank whose completions all end
early keeps stepping until every rank is done instead of leaving the others waiting in an
all-gather. Saving gathers the full weights to CPU on rank 0 (`full_state_dict`).
"""

from __future__ import annotations

import os

from torch import nn

from ppox.errors import ConfigError


def check_launch() -> None:
    """FSDP shards over the processes of a torchrun launch: refuse a plain single-process run."""
    if "WORLD_SIZE" not in os.environ:
        raise ConfigError(
            "--fsdp shards the models over the processes of a torchrun launch, and this is a single "
            "process: start it with `torchrun --nproc_per_node=N -m ppox llm train ... --fsdp` "
            "(N >= 2), or drop --fsdp"
        )


def block_classes(model: nn.Module) -> set[str]:
    """Class names of the model's repeated blocks (transformers' `_no_split_modules`), the FSDP units."""
    return set(getattr(model, "_no_split_modules", None) or ())


def shard(module: nn.Module, blocks: set[str]) -> nn.Module:
    """fully_shard every submodule whose class is in `blocks`, then `module` itself (in place).

    Call after every rank holds the same weights and before the optimizer is built: fully_shard
    replaces the parameters with sharded DTensors. Collect `module.parameters()` right after this,
    before any forward: after a forward without grad, a root FSDP module keeps its parameters
    unsharded and `parameters()` then yields those plain tensors, not the sharded ones that receive
    the gradients.
    """
    from torch.distributed.fsdp import fully_shard

    # reversed pre-order: children are sharded before their parents, as fully_shard requires
    for name, sub in reversed(list(module.named_modules())):
        if name and type(sub).__name__ in blocks:
            fully_shard(sub)
    fully_shard(module)
    # transformers' generate then runs with synced_gpus (ranks finishing early keep stepping)
    for sub in module.modules():
        if hasattr(sub, "generate"):
            sub._is_fsdp_managed_module = True
    return module


def reshard(*modules: nn.Module) -> None:
    """Register the sharded parameters again (a forward without grad leaves a root unsharded, and then
    `named_parameters()` yields plain tensors the optimizer does not know)."""
    from torch.distributed.fsdp import FSDPModule

    for module in modules:
        for sub in module.modules():
            if isinstance(sub, FSDPModule):
                sub.reshard()


def tied_names(module: nn.Module) -> dict[str, str]:
    """Every parameter name, aliases of tied parameters included (GPT-2's lm_head.weight =
    transformer.wte.weight), -> the first name of that parameter."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(p), name) for name, p in module.named_parameters(remove_duplicate=False)}


def full_state_dict(module: nn.Module) -> dict:
    """The full (unsharded) weights on CPU on rank 0, an empty dict elsewhere; call on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied parameters (GPT-2's lm_head = wte) come back as separate copies: make them one tensor
    # again, so that save_pretrained sees the tie and writes the weight once, as an unsharded save does.
    for name, canonical in tied_names(module).items():
        if name != canonical and name in state and canonical in state:
            state[name] = state[canonical]
    return state


def shard_models(enabled: bool, collective, policy: nn.Module, critic: nn.Module, ref: nn.Module | None) -> bool:
    """The trainer's `--fsdp` set-up: shard policy, critic and reference in place; True if sharded.

    Every rank must already hold rank 0's policy and critic (the trainer broadcasts them first); the
    reference is broadcast here. With torchrun and a single process there is nothing to shard over:
    the models stay whole (the same computation).
    """
    if not enabled:
        return False
    check_launch()
    if not collective.enabled:
        return False
    if ref is not None:
        collective.broadcast_module(ref)
    for model in (policy, critic, ref):
        if model is not None:
            shard(model, block_classes(model) | block_classes(policy))
    return True
