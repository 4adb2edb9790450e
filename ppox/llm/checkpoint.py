"""Resumable checkpoints of an LLM PPO run (`ppox llm train --resume RUN_DIR`).

A checkpoint is a directory RUN_DIR/checkpoints/ckpt_<step>/ holding

    policy.safetensors    the policy's trainable parameters: all of them, or only the LoRA adapters
                          (the frozen base is the model directory the run started from)
    critic.safetensors    the critic's parameters (value model or value head)
    trainer.safetensors   optimizer tensors, torch RNG state of every rank, the minibatch-shuffle generator
    state.json            step, completions, optimizer param groups, KL controller, prompt-sampler
                          state of every rank, config, the metrics so far

It uses the checkpoint-directory protocol of ppox.runs, as the gymnasium trainer does: files written
atomically into a temporary directory, which is renamed into place before `latest` is replaced,
so a process killed at any instant leaves `latest` naming a complete checkpoint. No pickle.
With torchrun, rank 0 writes (the other ranks send it their RNG states) and every rank loads.

With --fsdp the same files are written: the full (unsharded) parameters and optimizer state are
gathered to rank 0 on CPU with torch.distributed.checkpoint's full_state_dict, and the optimizer
state is stored in the unsharded layout (keyed by the parameter's position in the optimizer). A
checkpoint therefore does not record whether the run was sharded: an --fsdp checkpoint resumes
without FSDP and vice versa. On resume every rank reads the files and keeps its own shard.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from ppox import __version__
from ppox.errors import ModelFileError, PPOXError
from ppox.io import FORMAT_VERSION, atomic_write_json, load_tensors, save_tensors
from ppox.llm import fsdp
from ppox.runs import begin_checkpoint, discard_after, flatten_optimizer, publish_checkpoint, unflatten_optimizer
from ppox.runs import read_state as read_run_state

# the trainer (ppox.llm.trainer.LLMPPOTrainer), duck-typed: its state_dict()/load_state_dict() and public
# policy, critic, optimizer, collective, sharded, device and config
LLMPPOTrainer = Any

KIND = "ppox.llm.checkpoint"
REQUIRED_KEYS = ("step", "global_step", "optimizer", "kl_controller", "prompt_sampler", "config", "metrics")


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes (all of them, or only LoRA adapters); tied weights once."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def _optimizer_fqns(trainer: LLMPPOTrainer) -> tuple[list[str], dict[str, str]]:
    """Names of the optimizer's parameters in its order, as torch.distributed.checkpoint names them for
    ModuleList([policy, critic]) ("0.<policy name>", "1.<critic name>"), and every alias of a tied
    parameter (GPT-2's lm_head.weight = transformer.wte.weight) -> the name used here."""
    names: list[str] = []
    aliases: dict[str, str] = {}
    for index, model in enumerate((trainer.policy, trainer.critic)):
        names += [f"{index}.{name}" for name in trainable_state(model)]
        aliases.update({f"{index}.{n}": f"{index}.{c}" for n, c in fsdp.tied_names(model).items()})
    return names, aliases


def _sharded_models(trainer: LLMPPOTrainer) -> torch.nn.Module:
    return torch.nn.ModuleList([trainer.policy, trainer.critic])


def _full_options(**kwargs: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def model_state(trainer: LLMPPOTrainer, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """trainable_state(module); with FSDP the full tensors on CPU on rank 0 (empty elsewhere; call on every rank)."""
    if not trainer.sharded:
        return trainable_state(module)
    names = list(trainable_state(module))
    full = fsdp.full_state_dict(module)
    return {name: full[name] for name in names} if trainer.collective.is_main else {}


def optimizer_state(trainer: LLMPPOTrainer) -> dict[str, Any]:
    """The optimizer's state_dict in the unsharded layout (state keyed by parameter position).

    With FSDP the full state is gathered to rank 0 (an empty dict elsewhere; call on every rank) and
    its parameter names are mapped to positions, so both kinds of run write the same layout.
    """
    if not trainer.sharded:
        return trainer.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(_sharded_models(trainer), trainer.optimizer,
                                    options=_full_options(cpu_offload=True))
    if not trainer.collective.is_main:
        return {}
    names, aliases = _optimizer_fqns(trainer)
    position = {name: i for i, name in enumerate(names)}
    return {
        "state": {position[aliases[name]]: value for name, value in full["state"].items()},
        "param_groups": [{**group, "params": [position[aliases[n]] for n in group["params"]]}
                         for group in full["param_groups"]],
    }


def load_optimizer_state(trainer: LLMPPOTrainer, state_dict: dict[str, Any]) -> None:
    """Load an unsharded-layout optimizer state_dict (from optimizer_state) into the trainer's optimizer."""
    if not trainer.sharded:
        trainer.optimizer.load_state_dict(state_dict)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names, _ = _optimizer_fqns(trainer)
    groups = state_dict["param_groups"]
    if sorted(i for g in groups for i in g["params"]) != list(range(len(names))):
        raise ValueError(f"the checkpoint's optimizer has {sum(len(g['params']) for g in groups)} "
                         f"parameters, this run's {len(names)}")
    by_name = {
        "state": {names[int(i)]: value for i, value in state_dict["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups],
    }
    set_optimizer_state_dict(_sharded_models(trainer), trainer.optimizer, by_name, options=_full_options())


def save_checkpoint(trainer: LLMPPOTrainer, run_dir: str | Path, history: list[dict]) -> Path | None:
    """Write RUN_DIR/checkpoints/ckpt_<step>/ (rank 0); every rank must call it. Returns the path on rank 0."""
    trainer_state = trainer.state_dict()
    mine = {k: v for k, v in trainer_state["rng"].items() if k != "shuffle"}
    ranks = trainer.collective.gather_objects(mine)  # every rank's RNGs, in rank order
    if trainer.sharded:
        fsdp.reshard(trainer.policy, trainer.critic)
    # FSDP: every rank takes part in gathering the full weights and optimizer state to rank 0
    policy, critic = model_state(trainer, trainer.policy), model_state(trainer, trainer.critic)
    optim = optimizer_state(trainer)
    if not trainer.collective.is_main:
        return None
    name = f"ckpt_{trainer_state['step']}"
    tmp = begin_checkpoint(run_dir, name)
    tensors: dict[str, torch.Tensor] = {"rng.shuffle": trainer_state["rng"]["shuffle"]}
    for rank, rng in enumerate(ranks):
        tensors[f"rng.torch.{rank}"] = rng["torch"]
        if "cuda" in rng:
            tensors[f"rng.cuda.{rank}"] = rng["cuda"]
    optim_json = flatten_optimizer(optim, tensors)
    state = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "ppox_version": __version__,
        "step": trainer_state["step"],
        "global_step": trainer_state["global_step"],
        "world_size": trainer.collective.world_size,
        "lora": bool(trainer.config.lora_r),
        "kl_controller": trainer_state["kl_controller"],
        "optimizer": optim_json,
        "prompt_sampler": [rng["prompts"] for rng in ranks],
        "config": trainer.config.to_dict(),
        "metrics": [{k: v for k, v in r.items() if isinstance(v, int | float | str | bool)} for r in history],
    }
    save_tensors(tmp / "policy.safetensors", policy)
    save_tensors(tmp / "critic.safetensors", critic)
    save_tensors(tmp / "trainer.safetensors", tensors)
    atomic_write_json(tmp / "state.json", state)  # written last: a directory with state.json is complete
    return publish_checkpoint(tmp, name, trainer.config.keep_checkpoints)


def read_state(ckpt: Path) -> dict[str, Any]:
    return read_run_state(ckpt, KIND, "ppox LLM checkpoint", REQUIRED_KEYS)


def _load_parameters(trainer: LLMPPOTrainer, module: torch.nn.Module, path: Path) -> None:
    tensors = load_tensors(path, "cpu")
    params = trainable_state(module)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelFileError(f"{path} does not match this model ({what}): was it written with another "
                             "model, --critic or --lora-r?")
    for name, p in params.items():  # FSDP: the shape of the full parameter, not of this rank's shard
        if tensors[name].shape != p.shape:
            raise ModelFileError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, the model "
                                 f"{tuple(p.shape)}")
    if trainer.sharded:  # every rank holds the full tensors and keeps its own shard
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        for name, canonical in fsdp.tied_names(module).items():  # tied parameters: every alias gets the same tensor
            if canonical in tensors:
                tensors[name] = tensors[canonical]
        set_model_state_dict(module, tensors, options=_full_options(strict=False))
        return
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])


def load_checkpoint(trainer: LLMPPOTrainer, ckpt: Path) -> list[dict]:
    """Restore a trainer built with the run's config from `ckpt`; returns the metrics so far."""
    state = read_state(ckpt)
    if bool(state.get("lora")) != bool(trainer.config.lora_r):
        raise PPOXError(f"{ckpt} was written {'with' if state.get('lora') else 'without'} LoRA; "
                        "resume with the run's own --lora-r")
    _load_parameters(trainer, trainer.policy, ckpt / "policy.safetensors")
    _load_parameters(trainer, trainer.critic, ckpt / "critic.safetensors")
    path = ckpt / "trainer.safetensors"
    tensors = load_tensors(path, "cpu")
    try:
        load_optimizer_state(trainer, unflatten_optimizer(state["optimizer"], tensors))
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{path} does not match this run's optimizer: {first}") from None
    rank, same_world = trainer.collective.rank, state.get("world_size") == trainer.collective.world_size
    if "rng.shuffle" not in tensors or (same_world and f"rng.torch.{rank}" not in tensors):
        raise ModelFileError(f"{path} lacks the RNG states: a damaged checkpoint")
    rng: dict[str, Any] = {"shuffle": tensors["rng.shuffle"]}
    if same_world:
        rng.update(torch=tensors[f"rng.torch.{rank}"], cuda=tensors.get(f"rng.cuda.{rank}"),
                   prompts=state["prompt_sampler"][rank])
    try:
        trainer.load_state_dict({"step": state["step"], "global_step": state["global_step"],
                                 "kl_controller": state["kl_controller"], "rng": rng})
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{path} does not match this run's optimizer: {first}") from None
    if not same_world and trainer.collective.is_main:  # fresh random streams per rank: valid, not bit-exact
        print(f"warning: {ckpt} was written by {state.get('world_size')} process(es), this run has "
              f"{trainer.collective.world_size}: sampling continues with fresh random streams", file=sys.stderr)
    if trainer.collective.is_main:
        discard_after(ckpt.parent.parent, int(state["step"]))
    return list(state["metrics"])
