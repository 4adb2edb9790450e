"""The `ppox` command line: train, eval, plot, doctor, llm.

Each trainer's flags are generated from its config dataclass (tyro), so every field is a flag
with its default and help text. Bad input prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

from ppox.errors import PPOXError

USAGE = """usage: ppox <command> [args]

commands:
  train ENV_ID [--preset NAME] [--FIELD VALUE ...]   train PPO on a gymnasium environment
  eval RUN_DIR [--episodes N] [--json]               evaluate a trained policy
  plot RUN_DIR_OR_GLOB ... -o curves.png             learning curves (mean and 95% band over seeds)
  doctor RUN_DIR                                     diagnose a run: KL, clipping, entropy, value fit
  llm {train,eval,demo} ...                          PPO for causal language models
  presets                                            list the shipped presets

`ppox <command> --help` lists a command's flags."""


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------- train
def _preparse_train(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """Pull the positional ENV_ID and --preset out of argv; they pick the defaults tyro then shows."""
    env_id = None
    preset = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
        elif arg in ("--env-id", "--env_id") and i + 1 < len(argv):
            env_id = argv[i + 1]
            i += 2
            continue
        elif not arg.startswith("-") and env_id is None and (not rest or not rest[-1].startswith("--")):
            env_id = arg
        else:
            rest.append(arg)
        i += 1
    return env_id, preset, rest


def _elastic_restart_run_dir(argv: list[str]) -> str | None:
    """The --run-dir to resume when torchrun restarted the worker group after a failure, else None."""
    import os

    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or "--resume" in argv:
        return None
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--run-dir=") else (
            argv[i + 1] if arg == "--run-dir" and i + 1 < len(argv) else None)
        if value is not None:
            from ppox.rl.checkpoint import list_checkpoints

            return value if list_checkpoints(value) else None
    return None


def train_main(argv: list[str]) -> int:
    from ppox.rl.config import PPOConfig, deferred_validation, preset_config

    env_id, preset, rest = _preparse_train(argv)
    restarted_run = _elastic_restart_run_dir(rest)
    if restarted_run is not None:  # torchrun --max-restarts relaunched us: continue from the checkpoint
        rest = ["--resume", restarted_run] + (["--no-progress"] if "--no-progress" in rest else [])
    if any(a == "--resume" or a.startswith("--resume=") for a in rest):
        from ppox.rl.checkpoint import resume_main

        return resume_main(rest)
    default = preset_config(env_id or "CartPole-v1", preset)
    with deferred_validation():
        config = tyro.cli(
            PPOConfig, args=rest, default=default, prog="ppox train ENV_ID",
            description="Train PPO on a gymnasium environment. ENV_ID is positional (default CartPole-v1); "
            "--preset NAME loads a shipped preset (`ppox presets`) before the other flags.",
        )
    config.validate()
    return run_training(config)


def run_training(config, env_fn=None) -> int:
    from ppox.rl.ppo import PPO

    model = PPO(config, env_fn=env_fn)
    model.learn()
    if not model.collective.is_main:  # torchrun: rank 0 reports for the group
        return 0
    _print_summary(model.summary, model.run_dir)
    if model.interrupted:
        print(f"interrupted: model and summary so far saved in {model.run_dir}", file=sys.stderr)
        return 130
    return 0


def _print_summary(summary: dict, run_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ppox run {run_dir}", show_header=False)
    for key in ("env_id", "seed", "total_timesteps", "wall_seconds", "sps", "eval_return_mean", "eval_return_std",
                "eval_episodes", "final_train_return_mean"):
        value = summary.get(key)
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if summary.get("eval_return_mean") is not None:
        print(f"eval: mean return {summary['eval_return_mean']:.2f} +- {summary['eval_return_std']:.2f} over "
              f"{summary['eval_episodes']} episodes (deterministic)")


# ---------------------------------------------------------------------------- eval
@dataclass
class EvalArgs:
    """Evaluate a trained policy (observation-normalisation statistics frozen)."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """Run directory (or any directory holding model.safetensors and model.json)."""
    episodes: int = 20
    """Episodes to play."""
    deterministic: bool = True
    """Greedy / mean actions (--no-deterministic samples from the policy)."""
    seed: int | None = None
    """Seed of the evaluation envs (default: the run's seed + 100000)."""
    json: bool = False
    """Print the result as JSON."""
    video: str | None = None
    """Record the episodes to mp4 files in this directory."""


def eval_main(argv: list[str]) -> int:
    argv = ["--no-deterministic" if a == "--stochastic" else a for a in argv]
    args = tyro.cli(EvalArgs, args=argv, prog="ppox eval")
    from ppox.rl.ppo import PPO

    model = PPO.load(args.run_dir)
    if args.video:
        from ppox.rl.video import record_video

        paths = record_video(model, args.video, episodes=args.episodes, deterministic=args.deterministic,
                             seed=args.seed)
        print("videos:", *paths, sep="\n  ")
        return 0
    result = model.evaluate(args.episodes, deterministic=args.deterministic, seed=args.seed)
    model.close()
    if args.json:
        print(json.dumps({k: result[k] for k in ("mean", "std", "episodes", "returns")}))
    else:
        mode = "deterministic" if args.deterministic else "stochastic"
        print(f"{model.config.env_id}: mean return {result['mean']:.2f} +- {result['std']:.2f} over "
              f"{result['episodes']} episodes ({mode})")
    return 0


# ---------------------------------------------------------------------------- plot / doctor
@dataclass
class PlotArgs:
    """Plot learning curves: runs of one env and config grouped, mean and 95% bootstrap band over seeds."""

    paths: Annotated[tuple[str, ...], tyro.conf.Positional]
    """Run directories or glob patterns (quote globs)."""
    output: Annotated[str, tyro.conf.arg(aliases=["-o"])] = "curves.png"
    """Output image (png, svg or pdf)."""
    x: str = "steps"
    """x axis: steps or time."""
    metric: tuple[str, ...] = ("episodic_return_mean",)
    """Metrics to plot (one row of panels each)."""
    diagnostics: bool = False
    """Also plot approx_kl, clipfrac, entropy and explained variance."""


def plot_main(argv: list[str]) -> int:
    args = tyro.cli(PlotArgs, args=argv, prog="ppox plot")
    if args.x not in ("steps", "time"):
        return _error(f"--x must be steps or time, got {args.x!r}")
    from ppox.diagnostics.plot import plot_main as run_plot

    return run_plot(list(args.paths), args.output, args.x, list(args.metric), args.diagnostics)


@dataclass
class DoctorArgs:
    """Read a run's metrics and say in plain words what looks wrong and what to try."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """Run directory holding metrics.jsonl."""


def doctor_main(argv: list[str]) -> int:
    args = tyro.cli(DoctorArgs, args=argv, prog="ppox doctor")
    from ppox.diagnostics.doctor import doctor_main as run_doctor

    return run_doctor(args.run_dir)


def presets_main(argv: list[str]) -> int:
    from ppox.rl.config import load_presets

    for name, values in load_presets().items():
        print(f"{name:28s} {values.get('description', '')}")
    return 0


COMMANDS = {
    "train": train_main,
    "eval": eval_main,
    "plot": plot_main,
    "doctor": doctor_main,
    "presets": presets_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from ppox import __version__

        print(f"ppox {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "llm":
            from ppox.llm.cli import main as llm_main

            return llm_main(rest)
        if command not in COMMANDS:
            return _error(f"unknown command {command!r}; choose one of {', '.join([*COMMANDS, 'llm'])}")
        return COMMANDS[command](rest)
    except PPOXError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
