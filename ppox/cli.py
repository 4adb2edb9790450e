"""The `ppox` command line: train, eval, plot, doctor, llm.

Each trainer's flags are generated from its config dataclass (tyro), so every field is a flag
with its default and help text. Bad input prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import tyro

from ppox.errors import PPOXError

USAGE = """usage: ppox <command> [args]

commands:
  train ENV_ID [--preset NAME] [--FIELD VALUE ...]   train PPO on a gymnasium environment
  train --resume RUN_DIR [--total-timesteps N]       continue a run from its latest checkpoint
  eval RUN_DIR ... [--episodes N] [--json] [--video DIR]   evaluate trained policies (one line each)
  plot RUN_DIR_OR_GLOB ... -o curves.png             learning curves (mean and 95% band over seeds)
  doctor RUN_DIR ...                                 diagnose runs: KL, clipping, entropy, value fit
  llm {train,eval,demo} ...                          PPO for causal language models
  presets                                            list the shipped presets

`ppox <command> --help` lists a command's flags."""


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


T = TypeVar("T")


def parse_args(cls: type[T], argv: list[str], prog: str, **kwargs: Any) -> T:
    """tyro.cli, with its multi-line error box turned into one PPOXError line (--help is untouched)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parsed = tyro.cli(cls, args=argv, prog=prog, **kwargs)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise PPOXError(f"{_box_message(captured.getvalue())} (`{prog} --help` lists the flags)") from None
    sys.stderr.write(captured.getvalue())  # warnings from a successful parse still reach the user
    return parsed


def _box_message(text: str) -> str:
    """The first section of tyro's error box, as one line.

    rich draws the box with unicode lines on a terminal and with ASCII or none on a pipe, so the
    sections are found by their rules (runs of line characters), whatever draws them.
    """
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        content = line.strip().strip("│|╭╮╰╯+").strip()
        if re.search(r"[─━\-=]{4,}", content):  # a rule, maybe with the box title in it: a boundary
            sections.append([])
            continue
        if content:
            sections[-1].append(content)
    found = [" ".join(lines) for lines in sections if lines]
    if "│" not in text and len(found) > 1:  # without box lines the title stands on its own line first
        found = found[1:]
    return found[0] if found else (text.strip().splitlines() or ["invalid arguments"])[-1].strip()


_GLOB_CHARS = frozenset("*?[")


def expand_run_dirs(paths: tuple[str, ...] | list[str]) -> list[str]:
    """Run directories named directly or by a quoted glob; a glob that matches nothing is an error.

    The shell expands an unquoted `runs/CartPole-v1__1__*` to every match, so commands that take a
    run directory take several; quoting the pattern must give the same answer.
    """
    if not paths:
        raise PPOXError("give at least one run directory (or a quoted glob pattern)")
    dirs: list[str] = []
    for path in paths:
        if not Path(path).exists() and _GLOB_CHARS & set(path):
            matches = sorted(m for m in glob.glob(path) if Path(m).is_dir())
            if not matches:
                raise PPOXError(f"no run directory matches {path!r}")
            dirs.extend(matches)
        else:
            dirs.append(path)
    return list(dict.fromkeys(dirs))


# ---------------------------------------------------------------------------- train
def _preparse_train(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """Pull the positional ENV_ID and --preset out of argv; they pick the defaults tyro then shows."""
    env_id = None
    preset = None
    rest: list[str] = []
    switches = _switches()
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
        elif not arg.startswith("-") and env_id is None and (
                not rest or not rest[-1].startswith("--") or rest[-1] in switches or "=" in rest[-1]):
            env_id = arg
        else:
            rest.append(arg)
        i += 1
    return env_id, preset, rest


def _switches() -> set[str]:
    """The boolean flags of `ppox train`: a word after one of them is the ENV_ID, not the flag's value."""
    import dataclasses

    from ppox.rl.config import PPOConfig

    names = [f.name.replace("_", "-") for f in dataclasses.fields(PPOConfig) if f.type in ("bool", bool)]
    return {f"--{n}" for n in names} | {f"--no-{n}" for n in names}


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
    default = preset_config(env_id or DEFAULT_ENV_ID, preset)
    with deferred_validation():
        config = parse_args(PPOConfig, rest, "ppox train ENV_ID", default=default, description=TRAIN_DESCRIPTION)
    config.validate()
    if env_id is None:
        print(f"no ENV_ID given: training {config.env_id}", file=sys.stderr)
    return run_training(config)


DEFAULT_ENV_ID = "CartPole-v1"
TRAIN_DESCRIPTION = (
    f"Train PPO on a gymnasium environment. ENV_ID is positional (default {DEFAULT_ENV_ID}); "
    "--preset NAME loads a shipped preset (`ppox presets`) before the other flags. "
    "`ppox train --resume RUN_DIR [--total-timesteps N] [--no-progress]` continues RUN_DIR's run from its "
    "latest checkpoint with the config saved in it (Ctrl-C and --checkpoint-every write checkpoints)."
)


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
    evaluated = summary.get("eval_return_mean") is not None
    for key in ("env_id", "seed", "total_timesteps", "wall_seconds", "sps", "eval_return_mean", "eval_return_std",
                "eval_episodes", "final_train_return_mean"):
        if key in ("eval_return_std", "eval_episodes") and not evaluated:
            continue
        table.add_row("sps (mean)" if key == "sps" else key, _summary_cell(summary, key))  # bar: last iteration
    Console().print(table)
    if summary.get("eval_return_mean") is not None:
        print(f"eval: mean return {summary['eval_return_mean']:.2f} +- {summary['eval_return_std']:.2f} over "
              f"{summary['eval_episodes']} episodes (deterministic)")


def _summary_cell(summary: dict, key: str) -> str:
    value = summary.get(key)
    if value is None:
        if key == "eval_return_mean":
            why = "interrupted: not evaluated" if summary.get("interrupted") else "not evaluated: --eval-episodes 0"
            return f"—  ({why})"
        if key == "final_train_return_mean":
            return "—  (no training episode finished)"
        return "—"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------- eval
@dataclass
class EvalArgs:
    """Evaluate trained policies (observation-normalisation statistics frozen): one line per run directory."""

    run_dirs: Annotated[tuple[str, ...], tyro.conf.Positional]
    """Run directories or quoted glob patterns (or any directory holding model.safetensors and model.json)."""
    episodes: int = 20
    """Episodes to play."""
    deterministic: bool = True
    """Greedy / mean actions (--no-deterministic samples from the policy)."""
    seed: int | None = None
    """Seed of the evaluation envs (default: the run's seed + 100000)."""
    json: bool = False
    """Print the result as JSON: one object for one run directory, a list of objects for several."""
    video: str | None = None
    """Record the episodes to mp4 files in this directory (one subdirectory per run when there are several)."""


def eval_main(argv: list[str]) -> int:
    argv = ["--no-deterministic" if a == "--stochastic" else a for a in argv]
    args = parse_args(EvalArgs, argv, "ppox eval")
    run_dirs = expand_run_dirs(args.run_dirs)
    results = []
    for run_dir in run_dirs:
        video_dir = None
        if args.video:
            video_dir = Path(args.video) / Path(run_dir).name if len(run_dirs) > 1 else Path(args.video)
        result = _evaluate_run(run_dir, args, video_dir)
        results.append(result)
        if not args.json:
            mode = "deterministic" if args.deterministic else "stochastic"
            name = f"{run_dir} ({result['env_id']})" if len(run_dirs) > 1 else result["env_id"]
            print(f"{name}: mean return {result['mean']:.2f} +- {result['std']:.2f} over "
                  f"{result['episodes']} episodes ({mode})")
            if result.get("videos"):
                print("videos:", *result["videos"], sep="\n  ")
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


def _evaluate_run(run_dir: str, args: EvalArgs, video_dir: Path | None) -> dict[str, Any]:
    from ppox.rl.ppo import PPO

    model = PPO.load(run_dir)
    try:
        if video_dir is not None:
            returns, videos = _record(model, video_dir, args)
            result: dict[str, Any] = {"mean": float(sum(returns) / len(returns)), "std": _std(returns),
                                      "episodes": len(returns), "returns": returns}
        else:
            result = model.evaluate(args.episodes, deterministic=args.deterministic, seed=args.seed)
            videos = []
    finally:
        model.close()
    out = {"run_dir": run_dir, "env_id": model.config.env_id,
           **{k: result[k] for k in ("mean", "std", "episodes", "returns")}}
    if video_dir is not None:
        out["videos"] = [str(p) for p in videos]
    return out


def _record(model, video_dir: Path, args: EvalArgs) -> tuple[list[float], list[Path]]:
    """Record the episodes and return their returns too: a video without its score says little."""
    import gymnasium as gym

    from ppox.rl.video import record_video

    stats: list[gym.wrappers.RecordEpisodeStatistics] = []
    user_env_fn = model.env_fn

    def env_fn():
        env = user_env_fn() if user_env_fn is not None else gym.make(model.config.env_id, render_mode="rgb_array")
        stats.append(gym.wrappers.RecordEpisodeStatistics(env, buffer_length=max(args.episodes, 1)))
        return stats[-1]

    model.env_fn = env_fn
    try:
        videos = record_video(model, video_dir, episodes=args.episodes, deterministic=args.deterministic,
                              seed=args.seed)
    finally:
        model.env_fn = user_env_fn
    returns = [float(r) for s in stats for r in s.return_queue]
    if not returns:
        raise PPOXError(f"recording {model.config.env_id} finished no episode")
    return returns, videos


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return float((sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5)


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
    args = parse_args(PlotArgs, argv, "ppox plot")
    if not args.paths:
        return _error("give at least one run directory or quoted glob pattern")
    if args.x not in ("steps", "time"):
        return _error(f"--x must be steps or time, got {args.x!r}")
    from ppox.diagnostics.plot import plot_main as run_plot

    return run_plot(list(args.paths), args.output, args.x, list(args.metric), args.diagnostics)


@dataclass
class DoctorArgs:
    """Read runs' metrics and say in plain words what looks wrong and what to try (one report per run)."""

    run_dirs: Annotated[tuple[str, ...], tyro.conf.Positional]
    """Run directories holding metrics.jsonl, or quoted glob patterns."""


def doctor_main(argv: list[str]) -> int:
    """Exit code: 0 all healthy, 1 problems found in some run, 2 some run directory unreadable."""
    args = parse_args(DoctorArgs, argv, "ppox doctor")
    from ppox.diagnostics.doctor import doctor_main as run_doctor

    codes = []
    for k, run_dir in enumerate(expand_run_dirs(args.run_dirs)):
        if k:
            print()
        codes.append(run_doctor(run_dir))
    return max(codes)


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
