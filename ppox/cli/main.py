"""The `ppox` command: train, eval, plot, doctor, presets, and `llm ...` (ppox.cli.llm).

Each trainer's flags are generated from its config dataclass (tyro), so every field is a flag
with its default and help text. Bad input prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from ppox.cli.common import (
    AUTO_SWITCH_VALUES,
    auto_switches,
    elastic_restart_run_dir,
    error,
    expand_run_dirs,
    parse_args,
    print_summary,
)
from ppox.errors import PPOXError

USAGE = """usage: ppox <command> [args]

commands:
  train ENV_ID [--preset NAME] [--FIELD VALUE ...]   train PPO on a gymnasium environment
  train ENV_ID --preset-file FILE [--preset NAME]    ... with a preset from a TOML file (e.g. ppox tune's)
  train --resume RUN_DIR [--total-timesteps N]       continue a run from its latest checkpoint
  train ENV_ID --seeds 1-64 [--FIELD VALUE ...]      one agent per seed, batched in one process
  eval RUN_DIR ... [--episodes N] [--json] [--video DIR]   evaluate trained policies (one line each)
  plot RUN_DIR_OR_GLOB ... -o curves.png             learning curves (mean and 95% band over seeds)
  doctor RUN_DIR ...                                 diagnose runs: KL, clipping, entropy, value fit
  export RUN_DIR -o policy.onnx [--format torchscript]   the deterministic policy for deployment
  tune ENV_ID --trials N [--study-dir DIR] [--jobs K]  tune hyperparameters with Optuna
  distill TEACHER_RUN --run-dir DIR                  distil a privileged teacher into a deployable student
  distill demo [--run-dir DIR]                       teacher, student and blind PPO on a randomised task
  llm {train,eval,demo} ...                          PPO for causal language models
  presets                                            list the shipped presets

`ppox <command> --help` lists a command's flags."""


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
        if arg in ("--preset-file", "--preset_file") and i + 1 < len(argv):
            rest += [arg, argv[i + 1]]  # taken out by _preset_file
            i += 2
            continue
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
        elif not arg.startswith("-") and env_id is None and arg not in AUTO_SWITCH_VALUES and (
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
    names += auto_switches(PPOConfig)  # --compile: also a switch; a True/False/auto after it is its value
    return {f"--{n}" for n in names} | {f"--no-{n}" for n in names}


def train_main(argv: list[str]) -> int:
    from ppox.core.objective import deprecated_flags
    from ppox.rl.config import PPOConfig, deferred_validation, preset_config

    env_id, preset, rest = _preparse_train(deprecated_flags(argv))
    seeds, rest = _seeds_option(rest)
    restarted_run = elastic_restart_run_dir(rest)
    if restarted_run is not None:  # torchrun --max-restarts relaunched us: continue from the checkpoint
        rest = ["--resume", restarted_run] + (["--no-progress"] if "--no-progress" in rest else [])
    if any(a == "--resume" or a.startswith("--resume=") for a in rest):
        if seeds is not None:
            raise PPOXError("--seeds runs are not resumable: start the population again")
        from ppox.cli.resume import resume_main

        return resume_main(rest)
    preset, extra_presets, rest = _preset_file(preset, rest)
    default = preset_config(env_id or DEFAULT_ENV_ID, preset, extra_presets)
    with deferred_validation():
        config = parse_args(PPOConfig, rest, "ppox train ENV_ID", default=default, description=TRAIN_DESCRIPTION)
    config.validate()
    if env_id is None:
        print(f"no ENV_ID given: training {config.env_id}", file=sys.stderr)
    return run_training(config) if seeds is None else run_population(config, seeds)


def _preset_file(preset: str | None, argv: list[str]) -> tuple[str | None, dict | None, list[str]]:
    """--preset-file FILE: its presets join the shipped ones; a file of one preset needs no --preset."""
    for i, arg in enumerate(argv):
        if arg.split("=", 1)[0] in ("--preset-file", "--preset_file"):
            path = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
            if path is None:
                raise PPOXError("--preset-file needs a TOML file")
            from ppox.rl.config import load_preset_file

            presets = load_preset_file(path)
            if preset is None and len(presets) > 1:
                raise PPOXError(f"{path} holds several presets ({', '.join(presets)}): choose one with --preset")
            rest = argv[:i] + argv[i + (1 if "=" in arg else 2):]
            return preset if preset is not None else next(iter(presets)), presets, rest
    return preset, None, argv


DEFAULT_ENV_ID = "CartPole-v1"
TRAIN_DESCRIPTION = (
    f"Train PPO on a gymnasium environment. ENV_ID is positional (default {DEFAULT_ENV_ID}); "
    "--preset NAME loads a shipped preset (`ppox presets`) before the other flags. "
    "`ppox train --resume RUN_DIR [--total-timesteps N] [--no-progress]` continues RUN_DIR's run from its "
    "latest checkpoint with the config saved in it (Ctrl-C and --checkpoint-every write checkpoints). "
    "--preset-file FILE [--preset NAME] takes the preset from a TOML file (e.g. `ppox tune`'s best_preset.toml). "
    "--seeds 1-64 (or 1,2,5) trains one independent agent per seed in this process, batched, each into "
    "RUN_DIR/seed_<k> (docs/seeds.md)."
)


def run_training(config, env_fn=None) -> int:
    from ppox.rl.ppo import PPO

    model = PPO(config, env_fn=env_fn)
    model.learn()
    if not model.collective.is_main:  # torchrun: rank 0 reports for the group
        return 0
    print_summary(model.summary, model.run_dir)
    if model.interrupted:
        print(f"interrupted: model and summary so far saved in {model.run_dir}", file=sys.stderr)
        return 130
    return 0


def _seeds_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take `--seeds SPEC` (or --seeds=SPEC) out of argv: not a PPOConfig field, it turns one run into a population."""
    for i, arg in enumerate(argv):
        if arg.split("=", 1)[0] == "--seeds":
            if any(a.split("=", 1)[0] == "--seed" for a in argv):
                raise PPOXError("give --seed (one run) or --seeds (one agent per seed), not both")
            if "=" in arg:
                return arg.split("=", 1)[1], argv[:i] + argv[i + 1:]
            if i + 1 >= len(argv):
                raise PPOXError("--seeds needs seeds, e.g. --seeds 1-64 or --seeds 1,2,5")
            return argv[i + 1], argv[:i] + argv[i + 2:]
    return None, argv


def run_population(config, seeds_text: str) -> int:
    """`ppox train ENV --seeds SPEC`: one agent per seed, trained together (ppox.rl.population)."""
    from ppox.rl.population import Population, parse_seeds

    seeds = parse_seeds(seeds_text)
    population = Population(config, seeds).learn()
    summary = population.summary
    print(json.dumps({k: summary[k] for k in ("env_id", "agents", "total_timesteps_per_agent", "eval_return_mean",
                                              "eval_return_std", "agent_env_steps_per_second", "compile_seconds")},
                     indent=2))
    print(f"run directory: {population.run_dir} (one seed_<k> per agent; population.json)")
    if population.interrupted:
        print(f"interrupted: models and summaries so far saved in {population.run_dir}", file=sys.stderr)
        return 130
    return 0


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
        settings = model.config.wandb_settings()
        if settings is not None and videos and (Path(run_dir) / "wandb.json").is_file():  # the run's W&B run
            from ppox.tracking import log_videos

            log_videos(run_dir, settings, videos)
    return out


def _record(model, video_dir: Path, args: EvalArgs) -> tuple[list[float], list[Path]]:
    """Record the episodes and return their returns too: a video without its score says little."""
    import gymnasium as gym

    from ppox.rl.atari import is_atari
    from ppox.rl.envs import check_env_id
    from ppox.rl.video import record_video

    stats: list[gym.wrappers.RecordEpisodeStatistics] = []
    user_env_fn = model.env_fn
    if user_env_fn is None and is_atari(check_env_id(model.config.env_id)):  # whole games, raw scores
        returns: list[float] = []
        videos = record_video(model, video_dir, episodes=args.episodes, deterministic=args.deterministic,
                              seed=args.seed, returns=returns)
        return returns, videos

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
        return error("give at least one run directory or quoted glob pattern")
    if args.x not in ("steps", "time"):
        return error(f"--x must be steps or time, got {args.x!r}")
    from ppox.diagnostics.plot import plot_main as run_plot
    from ppox.rl.config import preset_config

    def preset_defaults(env_id: str, preset: str | None) -> dict:
        return preset_config(env_id, preset).to_dict()

    return run_plot(list(args.paths), args.output, args.x, list(args.metric), args.diagnostics, preset_defaults)


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
    "export": lambda argv: _tools().export_main(argv),
    "tune": lambda argv: _tools().tune_main(argv),
    "distill": lambda argv: _distill(argv),
}


def _distill(argv: list[str]) -> int:
    from ppox.cli.distill import main as distill_main

    return distill_main(argv)


def _tools():
    import ppox.cli.tools as tools  # optuna / onnx stay unimported until these commands run

    return tools


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
            from ppox.cli.llm import main as llm_main

            return llm_main(rest)
        if command not in COMMANDS:
            return error(f"unknown command {command!r}; choose one of {', '.join([*COMMANDS, 'llm'])}")
        return COMMANDS[command](rest)
    except PPOXError as exc:
        return error(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
