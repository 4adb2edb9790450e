"""`ppox llm train | eval | demo`: flags generated from the config dataclasses with tyro.

The top-level `ppox` command (ppox.cli.main) dispatches `ppox llm <rest>` to `main(rest)`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from ppox.cli.common import elastic_restart_run_dir, parse_args
from ppox.cli.resume import parse_resume_args
from ppox.errors import ConfigError, PPOXError
from ppox.llm.config import LLMPPOConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only: never reach the network

USAGE = """usage: ppox llm {train,eval,demo} [--help] [flags]

  train   PPO on a local causal LM (--model-path DIR) with a task or a reward model;
          `train --resume RUN_DIR [--total-steps N]` continues a run from its latest checkpoint
  eval    greedy exact-match accuracy of a model on the arithmetic test split
  demo    offline demo: tiny GPT-2, supervised pre-training, then PPO on arithmetic;
          `demo --resume RUN_DIR [--total-steps N]` finishes a stopped demo's PPO and its summary
"""


@dataclass
class EvalConfig:
    """Greedy exact-match accuracy of a causal LM on the arithmetic task's held-out split."""

    model_path: str
    """Local model directory (save_pretrained layout, with its tokenizer)."""
    task: str = "arithmetic"
    """Task to evaluate on (only 'arithmetic')."""
    num_test: int = 500
    """Held-out test problems (the same split as training with the same seed and num_test)."""
    seed: int = 1
    """Seed that drew the split."""
    max_new_tokens: int = 6
    """Longest completion."""
    torch_threads: int = 2
    """CPU threads for torch."""

    def __post_init__(self) -> None:
        for name in ("num_test", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be an integer > 0, got {value!r}")
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads must be >= 0, got {self.torch_threads}")


def build_trainer(cfg: LLMPPOConfig):
    """The trainer a `train` command describes: model, prompts, reward and evaluation from the flags."""
    from ppox.distributed import resolve_device
    from ppox.llm.data import load_prompts, max_prompt_bytes
    from ppox.llm.models import context_length, load_policy
    from ppox.llm.reward import RewardModel
    from ppox.llm.tasks import REWARDS, arithmetic_splits, exact_match_reward, greedy_accuracy
    from ppox.llm.trainer import LLMPPOTrainer

    if cfg.model_path is None:
        raise ConfigError(
            "--model-path is required: a local causal-LM directory "
            "(e.g. DIR/sft_model written by `ppox llm demo --run-dir DIR`)"
        )
    if cfg.task == "none" and cfg.prompts_file is None:
        raise ConfigError("with --task none a prompt dataset is needed: set --prompts-file")
    if cfg.task == "none" and cfg.reward_model_path is None:
        raise ConfigError("with --task none a reward is needed: set --reward-model-path")
    resolve_device(cfg.device)  # before minutes of loading
    model, tokenizer = load_policy(cfg.model_path)
    train = test = None
    if cfg.task == "arithmetic":
        train, test = arithmetic_splits(cfg.num_test, 50_000, cfg.seed)
    if cfg.prompts_file:  # bounded before tokenising: a line longer than the context can hold is refused
        prompts = load_prompts(cfg.prompts_file, max_prompt_bytes(context_length(model)))
    else:
        prompts = [p.prompt for p in train]
    reward_fn = RewardModel(cfg.reward_model_path, cfg.device) if cfg.reward_model_path else REWARDS[cfg.reward]
    on_task = cfg.task == "arithmetic" and cfg.prompts_file is None
    return LLMPPOTrainer(
        cfg, model, tokenizer, reward_fn, prompts,
        accuracy_fn=exact_match_reward if on_task else None,
        evaluate_fn=(lambda policy: {"accuracy": greedy_accuracy(policy, tokenizer, test)[0]}) if test else None,
    )


RESUME_USAGE = "usage: ppox llm train --resume RUN_DIR [--total-steps N] [--model-path DIR]"
DEMO_RESUME_USAGE = "usage: ppox llm demo --resume RUN_DIR [--total-steps N]"


def _wants_resume(argv: list[str]) -> bool:
    return any(a == "--resume" or a.startswith("--resume=") for a in argv)


def _resume(argv: list[str], usage: str = RESUME_USAGE,
            options: tuple[str, ...] = ("--resume", "--total-steps", "--model-path")):
    """`ppox llm train --resume RUN_DIR [--total-steps N] [--model-path DIR]`: the run's trainer, restored from
    its latest checkpoint. --model-path replaces the saved one (a model directory that moved)."""
    from ppox.errors import ModelFileError
    from ppox.llm.checkpoint import read_state
    from ppox.runs import find_checkpoint

    values = parse_resume_args(argv, options, usage=usage)
    run_dir = str(values["--resume"])
    ckpt = find_checkpoint(run_dir)
    state = read_state(ckpt)
    try:
        cfg = LLMPPOConfig(**state["config"])
    except TypeError as exc:
        raise ModelFileError(f"{ckpt / 'state.json'} holds no valid config ({exc})") from None
    changes: dict = {"run_dir": run_dir}
    if "--model-path" in values:
        changes["model_path"] = str(values["--model-path"])
    if "--total-steps" in values:
        try:
            changes["total_steps"] = int(values["--total-steps"])
        except ValueError:
            raise ConfigError(f"--total-steps must be an integer, got {values['--total-steps']!r}") from None
    cfg = cfg.replace(**changes)
    trainer = build_trainer(cfg)
    trainer.resume(run_dir)
    if trainer.collective.is_main:
        print(f"resuming {run_dir} from step {trainer.step_count} ({ckpt.name})", file=sys.stderr)
    return trainer


def _train(argv: list[str]) -> int:
    from ppox.core.objective import deprecated_flags

    argv = deprecated_flags(argv)
    restarted_run = elastic_restart_run_dir(argv)
    if restarted_run is not None:  # torchrun --max-restarts relaunched us: continue from the checkpoint
        argv = ["--resume", restarted_run]
    if _wants_resume(argv):
        trainer = _resume(argv)
        cfg = trainer.config
    else:
        cfg = parse_args(LLMPPOConfig, argv, "ppox llm train", default=LLMPPOConfig())
        trainer = build_trainer(cfg)

    def show(r: dict) -> None:
        acc = f" acc={r['accuracy']:.3f}" if "accuracy" in r else ""
        test = f" test_acc={r['eval_accuracy']:.3f}" if "eval_accuracy" in r else ""
        print(f"step {r['iteration']}: reward={r['reward_mean']:.3f}{acc} kl_ref={r['kl_ref']:.3f} "
              f"approx_kl={r['approx_kl']:.4f} clipfrac={r['clipfrac']:.3f}{test}", flush=True)

    trainer.learn(cfg.run_dir, log=show)
    if not trainer.collective.is_main:  # torchrun: rank 0 reports for the group
        return 130 if trainer.interrupted else 0
    print(f"policy saved to {cfg.run_dir}/policy")
    if trainer.interrupted:  # SIGINT/SIGTERM: stopped after a step, with a checkpoint (the trainer said how to resume)
        return 130
    return 0


def _eval(argv: list[str]) -> int:
    import torch

    from ppox.llm.models import load_policy
    from ppox.llm.tasks import arithmetic_splits, greedy_accuracy

    cfg = parse_args(EvalConfig, argv, "ppox llm eval")
    if cfg.task != "arithmetic":
        raise ConfigError(f"unknown task {cfg.task!r}: only 'arithmetic' can be evaluated")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    model, tokenizer = load_policy(cfg.model_path)
    _, test = arithmetic_splits(cfg.num_test, 0, cfg.seed)
    accuracy, tps = greedy_accuracy(model, tokenizer, test, cfg.max_new_tokens)
    print(json.dumps({"accuracy": accuracy, "test_problems": len(test), "tokens_per_s": tps}))
    return 0


def _demo(argv: list[str]) -> int:
    from ppox.llm.demo import DemoConfig, finish_demo, read_demo_record, run_demo
    if _wants_resume(argv):  # a demo stopped during PPO: its checkpoint, then the demo's summary
        run_dir = str(parse_resume_args(argv, ("--resume", "--total-steps"), usage=DEMO_RESUME_USAGE)["--resume"])
        record = read_demo_record(run_dir)  # before loading anything: is this a demo's run directory?
        summary = finish_demo(_resume(argv, DEMO_RESUME_USAGE, ("--resume", "--total-steps")), record)
    else:
        cfg = parse_args(DemoConfig, argv, "ppox llm demo", default=DemoConfig())
        summary = run_demo(cfg)
    return 130 if summary.get("interrupted") else 0


COMMANDS = {"train": _train, "eval": _eval, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command 'ppox llm {argv[0]}' (choose train, eval or demo)", file=sys.stderr)
        return 2
    from ppox.llm.models import quiet_transformers

    try:
        with quiet_transformers():
            return command(argv[1:])
    except PPOXError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # tyro: --help (0) or a malformed flag (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2


if __name__ == "__main__":
    sys.exit(main())
