"""`ppox export` (ONNX / TorchScript with a parity check) and `ppox tune` (Optuna)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ppox.cli.common import parse_args
from ppox.errors import PPOXError


# ---------------------------------------------------------------------------- export
@dataclass
class ExportArgs:
    """Export the deterministic policy of a trained run (frozen observation normalisation and action clipping
    included) and check it against ppox's predict on a batch of observations (largest difference <= 1e-5)."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """Run directory (or any directory holding model.safetensors and model.json; e.g. RUN_DIR/best)."""
    output: Annotated[str, tyro.conf.arg(aliases=["-o"])] = "policy.onnx"
    """Output file."""
    format: Literal["onnx", "torchscript"] = "onnx"
    """onnx (run with onnxruntime; pip install 'ppox[export]') or torchscript (torch.jit.load)."""
    batch: int = 256
    """Observations sampled from the observation space for the parity check."""


def export_main(argv: list[str]) -> int:
    args = parse_args(ExportArgs, argv, "ppox export")
    if args.batch <= 0:
        raise PPOXError(f"--batch must be > 0, got {args.batch}")
    from ppox.rl.export import PARITY_TOLERANCE, export_policy
    from ppox.rl.ppo import PPO

    model = PPO.load(args.run_dir)
    report = export_policy(model, args.output, args.format, batch=args.batch)
    print(f"exported {model.config.env_id} policy to {report.path} ({report.format}; inputs {', '.join(report.inputs)}"
          f" -> outputs {', '.join(report.outputs)})")
    if report.note:
        print(f"note: {report.note}")
    runtime = "onnxruntime" if report.format == "onnx" else "the TorchScript module"
    print(f"parity: {runtime} vs ppox predict on {report.batch} observations: max |difference| "
          f"{report.max_abs_diff:.3g} (<= {PARITY_TOLERANCE:g}) OK")
    return 0


# ---------------------------------------------------------------------------- tune
@dataclass
class TuneArgs:
    """Tune PPO's hyperparameters on ENV_ID with Optuna (TPE sampler, median pruning on intermediate evaluations).
    The study lives in STUDY_DIR/study.db: the same command continues an interrupted study up to --trials."""

    env_id: Annotated[str, tyro.conf.Positional]
    """Gymnasium environment id."""
    trials: int = 20
    """Finished (complete or pruned) trials the study should hold."""
    study_dir: str | None = None
    """Where the study, the trials' runs, the table, the plots and best_preset.toml go (default tune/ENV_ID)."""
    jobs: int = 1
    """Trials run in parallel, one process each, on the one SQLite study."""
    preset: str | None = None
    """Base preset the sampled values replace (default: the env's own preset)."""
    timesteps: int = 50_000
    """Env steps per trial."""
    evaluations: int = 4
    """Evaluations per trial (the last one is the trial's value); the pruner compares the intermediate ones."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    space: str | None = None
    """TOML file whose entries replace or add to the family's search space (ppox/presets/search_spaces.toml)."""
    startup_trials: int = 5
    """Trials sampled at random and never pruned before TPE and the median pruner start."""
    seed: int = 1
    """Seed of the sampler and of every trial's training."""


def tune_main(argv: list[str]) -> int:
    args = parse_args(TuneArgs, argv, "ppox tune ENV_ID")
    for name in ("trials", "jobs", "timesteps", "evaluations", "eval_episodes"):
        if getattr(args, name) <= 0:
            raise PPOXError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.startup_trials < 0:
        raise PPOXError(f"--startup-trials must be >= 0, got {args.startup_trials}")
    from ppox.rl.envs import check_env_id
    from ppox.rl.tune import TuneSettings, tune

    check_env_id(args.env_id)
    study_dir = args.study_dir or str(Path("tune") / args.env_id.replace("/", "_"))
    settings = TuneSettings(args.env_id, args.preset, study_dir, args.trials, args.timesteps, args.evaluations,
                            args.eval_episodes, args.space, args.startup_trials, args.seed)
    result = tune(settings, jobs=args.jobs)
    _print_table(study_dir)
    print(f"study {study_dir}/study.db: {result['finished']} finished trials ({result['finished_before']} before this "
          f"run); table {study_dir}/trials.csv" + "".join(f", plot {p}" for p in result["plots"]))
    if "best_value" in result:
        print(f"best: trial {result['best_trial']}, eval return {result['best_value']:.2f}; preset "
              f"{result['preset_file']}\ntrain it: ppox train {args.env_id} --preset-file {result['preset_file']}")
    return 0


def _print_table(study_dir: str) -> None:
    import csv

    from rich.console import Console
    from rich.table import Table

    with open(Path(study_dir) / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    table = Table(title=f"trials of {study_dir}")
    columns = [c for c in rows[0] if c != "duration"]  # trials.csv keeps it; the table stays one line per trial
    for column in columns:
        table.add_column(column.removeprefix("params_"))
    for row in rows:
        table.add_row(*[_cell(row[c]) for c in columns])
    Console().print(table)


def _cell(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() and "e" not in text.lower() else f"{value:.4g}"
