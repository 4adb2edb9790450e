"""Hyperparameter tuning with Optuna: `ppox tune ENV --trials N [--study-dir DIR] [--jobs K]`.

Everything a study needs is Optuna's own: the TPE sampler, median pruning on the intermediate evaluations
(reported by an EvalCallback subclass, so a pruned trial stops training like any callback stop), the study
stored in SQLite (STUDY_DIR/study.db) so that running the same command again continues it up to N finished
trials, heartbeats that mark the trials of a killed process failed (and retry their parameters), its
trials table and plots. ppox adds the search spaces (ppox/presets/search_spaces.toml, one per family of
presets, overridable from a TOML file) and writes the best trial as a preset TOML for
`ppox train --preset-file`.

STUDY_DIR holds: study.db, trials/trial_<n>/ (each trial's run directory), trials.csv, optimization_history.png,
intermediate_values.png, best_preset.toml.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tomllib
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from ppox.errors import ConfigError, PPOXError
from ppox.io import atomic_write_bytes
from ppox.rl.callbacks import EvalCallback
from ppox.rl.config import PPOConfig, load_presets, preset_config

FINISHED = ("COMPLETE", "PRUNED")  # the trial states that count towards --trials
STUDY_NAME = "ppox"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise PPOXError("ppox tune needs optuna: pip install 'ppox[tune]'") from None
    return optuna


# ---------------------------------------------------------------------------- search spaces
def load_search_space(family: str, override: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The family's search space (ppox/presets/search_spaces.toml), its entries replaced by `override`'s."""
    spaces = tomllib.loads(resources.files("ppox").joinpath("presets/search_spaces.toml").read_text())
    space = dict(spaces[family])
    if override is not None:
        try:
            extra = tomllib.loads(Path(override).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the search space {override}: {exc}") from None
        space.update(extra.get(family, extra) if isinstance(extra.get(family), dict) else extra)
    fields = {f.name for f in dataclasses.fields(PPOConfig)}
    for name, spec in space.items():
        if name not in fields:
            raise ConfigError(f"search space: {name!r} is not a PPOConfig field")
        kind = spec.get("type") if isinstance(spec, dict) else None
        needed = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",), "fixed": ("value",)}
        if kind not in needed or any(k not in spec for k in needed[kind]):
            raise ConfigError(f"search space: {name} = {spec!r}; use {{type = \"float\"|\"int\", low, high, log}}, "
                              "{type = \"categorical\", choices} or {type = \"fixed\", value}")
    return space


def sample(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per field of `space`, drawn by the trial (Optuna's suggest_* API)."""
    values: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            values[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif kind == "int":
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(spec["choices"]))
        else:
            values[name] = spec["value"]
    return values


def family(env_id: str) -> str:
    """'continuous' for Box actions (ppo_continuous_action.py's family of presets), else 'discrete'."""
    from gymnasium import spaces

    from ppox.rl.envs import make_single_env

    env = make_single_env(env_id)
    try:
        return "continuous" if isinstance(env.action_space, spaces.Box) else "discrete"
    finally:
        env.close()


# ---------------------------------------------------------------------------- one trial
class TrialEvalCallback(EvalCallback):
    """EvalCallback that reports each evaluation to the Optuna trial and stops training when it is pruned."""

    def __init__(self, trial: Any, eval_freq: int, n_eval_episodes: int) -> None:
        super().__init__(eval_freq=eval_freq, n_eval_episodes=n_eval_episodes, verbose=0)
        self.trial = trial
        self.is_pruned = False

    def _on_update(self) -> bool:
        evaluations = len(self.evaluations)
        go_on = super()._on_update()
        if len(self.evaluations) > evaluations:
            self.trial.report(self.last_mean_reward, self.num_timesteps)
            if self.trial.should_prune():
                self.is_pruned = True
                return False
        return go_on


@dataclasses.dataclass
class TuneSettings:
    env_id: str
    preset: str | None
    study_dir: str
    n_trials: int
    timesteps: int
    n_evaluations: int
    eval_episodes: int
    space_file: str | None
    startup_trials: int
    seed: int


def _objective(settings: TuneSettings, space: dict[str, dict[str, Any]]):
    optuna = _optuna()
    from ppox.rl.ppo import PPO

    def objective(trial: Any) -> float:
        params = sample(trial, space)
        run_dir = Path(settings.study_dir) / "trials" / f"trial_{trial.number}"
        try:
            config = preset_config(
                settings.env_id, settings.preset, **params, total_timesteps=settings.timesteps,
                seed=settings.seed, run_dir=str(run_dir), overwrite=True, eval_episodes=settings.eval_episodes,
                eval_every=0, stop_at_return=None, progress=False, tensorboard=False, live_doctor=False,
                checkpoint_every=0, wandb=False)
        except ConfigError as exc:  # a combination the trainer refuses (e.g. batch not divisible)
            trial.set_user_attr("invalid", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        total = config.num_iterations * config.batch_size
        callback = TrialEvalCallback(trial, max(config.batch_size, total // settings.n_evaluations),
                                     settings.eval_episodes)
        with PPO(config) as model:
            model.learn(callback=callback)
        if callback.is_pruned:
            raise optuna.TrialPruned()
        return float(model.summary["eval_return_mean"])

    return objective


def _storage(study_dir: Path):
    """The study's SQLite storage, with Optuna's heartbeats: a trial whose process died (no heartbeat for
    30 s) is marked failed when the study next runs, and its parameters are tried again once."""
    import warnings

    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            f"sqlite:///{study_dir / 'study.db'}", heartbeat_interval=10, grace_period=30,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))


def _study(settings: TuneSettings):
    optuna = _optuna()
    return optuna.create_study(
        study_name=STUDY_NAME, storage=_storage(Path(settings.study_dir)), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                           n_warmup_steps=settings.timesteps // 3))


def _finished(study: Any) -> int:
    optuna = _optuna()
    return len(study.get_trials(deepcopy=False, states=tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)))


def _worker(settings: TuneSettings, worker: int) -> None:
    """One process of the study: trials until the study holds n_trials finished ones."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = dataclasses.replace(settings, seed=settings.seed + worker)  # distinct samples per worker
    study = _study(settings)
    if _finished(study) >= settings.n_trials:
        return
    space = load_search_space(family(settings.env_id), settings.space_file)
    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    study.optimize(_objective(settings, space), n_trials=settings.n_trials,
                   callbacks=[optuna.study.MaxTrialsCallback(settings.n_trials, states=states)],
                   catch=(PPOXError,))


def tune(settings: TuneSettings, jobs: int = 1) -> dict[str, Any]:
    """Run (or continue) the study to `n_trials` finished trials; write the table, plots and best preset."""
    study_dir = Path(settings.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    load_search_space(family(settings.env_id), settings.space_file)  # bad input fails here, before any worker
    before = _finished(_study(settings))
    if jobs <= 1:
        _worker(settings, 0)
    else:
        # one process per job, all on the same SQLite study (Optuna's way to parallelise)
        with ProcessPoolExecutor(jobs) as pool:
            for future in [pool.submit(_worker, settings, k) for k in range(jobs)]:
                future.result()
    study = _study(settings)
    return report(study, settings, before)


# ---------------------------------------------------------------------------- results
def report(study: Any, settings: TuneSettings, before: int) -> dict[str, Any]:
    optuna = _optuna()
    study_dir = Path(settings.study_dir)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
    atomic_write_bytes(study_dir / "trials.csv", frame.to_csv(index=False).encode())
    plots = _plots(study, study_dir)
    result: dict[str, Any] = {"study_dir": str(study_dir), "finished_before": before,
                              "finished": _finished(study), "trials": len(study.trials), "plots": plots}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        path = study_dir / "best_preset.toml"
        name = f"tuned-{settings.env_id}"
        atomic_write_bytes(path, best_preset_toml(name, settings, best.params, best.value, best.number).encode())
        result.update(best_value=best.value, best_trial=best.number, best_params=best.params, preset_file=str(path),
                      preset_name=name)
    return result


def _plots(study: Any, study_dir: Path) -> list[str]:
    """Optuna's own plots (matplotlib backend), when matplotlib is installed and a trial finished."""
    if not study.get_trials(deepcopy=False):
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as vis
    except ImportError:
        print("note: matplotlib is not installed: no trial plots (pip install 'ppox[plot]')", file=sys.stderr)
        return []
    import warnings

    written = []
    for name, plot in (("optimization_history", vis.plot_optimization_history),
                       ("intermediate_values", vis.plot_intermediate_values)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError):  # nothing to plot yet (no complete trial, no reports)
                continue
        path = study_dir / f"{name}.png"
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(str(path))
    return written


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"cannot write {value} to a preset")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to a preset")


def best_preset_toml(name: str, settings: TuneSettings, params: dict[str, Any], value: float, number: int) -> str:
    """A preset table: the base preset's values with the best trial's parameters (for --preset-file)."""
    presets = load_presets()
    base_name = settings.preset if settings.preset is not None else settings.env_id
    values = {k: v for k, v in presets.get(base_name, {}).items() if k != "description"}
    values.update(params)
    lines = [f"# written by `ppox tune {settings.env_id}`: trial {number} of the study in {settings.study_dir}",
             f"# train with: ppox train {settings.env_id} --preset-file THIS_FILE", "",
             f"[{json.dumps(name)}]",
             "description = " + json.dumps(f"tuned by ppox tune: eval return {value:.2f} after {settings.timesteps} "
                                           "steps per trial")]
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
