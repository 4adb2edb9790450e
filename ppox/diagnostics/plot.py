"""Learning-curve plots: mean across seeds with a bootstrap confidence band."""

from __future__ import annotations

import glob
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppox.diagnostics.metrics_io import METRICS_FILE, load_run, metric_series
from ppox.errors import PPOXError

DEFAULT_METRIC = "episodic_return_mean"
DIAGNOSTIC_METRICS = ("approx_kl", "clipfrac", "entropy", "explained_variance")
X_KEYS = {"steps": "global_step", "time": "wall_time"}
X_LABELS = {"steps": "environment steps", "time": "wall time (s)"}
#: Config keys that don't change the algorithm, ignored when grouping runs.
BOOKKEEPING_KEYS = frozenset(
    {
        "seed",
        "run_dir",
        "overwrite",
        "resume",
        "track",
        "checkpoint_every",
        "keep_checkpoints",
        "progress",
        "exp_name",
        "run_name",
        "device",
        "wandb_project",
        "wandb_entity",
        "capture_video",
    }
)
#: Axis labels of the usual metrics (others show their key).
METRIC_LABELS = {
    "episodic_return_mean": "episodic return",
    "episodic_length_mean": "episode length",
    "approx_kl": "approx. KL per update",
    "clipfrac": "clip fraction",
    "entropy": "policy entropy",
    "explained_variance": "explained variance",
    "value_loss": "value loss",
    "policy_loss": "policy loss",
}
#: Short names for legend labels; keys listed here also come first when several differ.
LABEL_NAMES = {
    "preset": "preset",
    "learning_rate": "lr",
    "num_envs": "envs",
    "num_steps": "steps/env",
    "num_minibatches": "minibatches",
    "update_epochs": "epochs",
    "clip_coef": "clip",
    "ent_coef": "ent",
    "gamma": "gamma",
    "gae_lambda": "lambda",
    "target_kl": "target_kl",
    "total_timesteps": "budget",
}
#: Settings that change speed or logging, not learning: named last in a legend label.
NON_LEARNING_KEYS = frozenset(
    {"compile", "torch_threads", "env_backend", "vectorization", "tensorboard", "live_doctor", "eval_episodes",
     "max_env_restarts", "env_step_timeout"}
)
#: A legend label names at most this many differing settings, then "+N more".
LABEL_MAX_KEYS = 3
SUPPORTED_FORMATS = (".png", ".svg", ".pdf")
GRID_POINTS = 200
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


class NoRunsError(PPOXError, ValueError):
    """No run directory matched the given paths."""


@dataclass
class Run:
    """One run directory's data needed for plotting."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def env_id(self) -> str:
        return str(self.config.get("env_id", "unknown env"))


@dataclass
class RunGroup:
    """Runs sharing env and config (differing only in seed/bookkeeping)."""

    key: str
    env_id: str
    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)


def expand_paths(paths: list[str]) -> list[Path]:
    """Expand globs; keep directories holding metrics.jsonl (a metrics.jsonl path means its dir)."""
    found: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for m in matches:
            p = Path(m)
            if p.is_file() and p.name == METRICS_FILE:
                p = p.parent
            if (p / METRICS_FILE).is_file() and p.resolve() not in {f.resolve() for f in found}:
                found.append(p)
    return found


def load_runs(paths: list[str]) -> list[Run]:
    """Load every run directory matched by ``paths`` (runs without records are skipped)."""
    runs = []
    for p in expand_paths(paths):
        data = load_run(p)
        if data.records:
            runs.append(Run(path=p, config=data.config or {}, records=data.records))
    return runs


def _algorithm_config(run: Run) -> dict[str, Any]:
    """The run's config without seed and bookkeeping keys."""
    return {k: v for k, v in run.config.items() if k not in BOOKKEEPING_KEYS}


def group_key(run: Run) -> str:
    """Canonical key of a run's config without seed and bookkeeping keys."""
    if not run.config:
        # without a config we can't tell what it was; never merge it with anything else
        return f"path:{run.path.resolve()}"
    return json.dumps(_algorithm_config(run), sort_keys=True, default=str)


def group_runs(runs: list[Run]) -> list[RunGroup]:
    """Group runs by env and config (minus seed/bookkeeping), in first-seen order."""
    groups: dict[str, RunGroup] = {}
    for run in runs:
        key = group_key(run)
        if key not in groups:
            groups[key] = RunGroup(key=key, env_id=run.env_id, config=_algorithm_config(run))
        groups[key].runs.append(run)
    return list(groups.values())


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "x".join(_fmt_value(v) for v in value)
    return str(value)


PresetDefaults = Callable[[str, str | None], dict[str, Any]]
"""(env_id, preset) -> the full config that preset gives: passed in by the caller (the CLI passes the RL
trainer's), so diagnostics reads runs without importing a trainer."""


def _preset_overrides(config: dict[str, Any], preset_defaults: PresetDefaults | None) -> set[str] | None:
    """The keys where ``config`` differs from its own preset, or None if the preset can't be loaded."""
    if preset_defaults is None:
        return None
    try:
        base = preset_defaults(str(config.get("env_id")), config.get("preset"))
    except Exception:  # an unknown or renamed preset: label by the settings themselves
        return None
    same = json.dumps  # values compare as JSON, as in group_key
    return {k for k, v in config.items() if k in base and same(v, default=str) != same(base[k], default=str)}


def _config_name(config: dict[str, Any], differing: list[str], preset_defaults: PresetDefaults | None = None) -> str:
    """Short name of a config from the settings that differ between the plotted configs."""
    keys = list(differing)
    parts: list[str] = []
    if "preset" in keys:
        # the preset explains the settings it sets: name it and only the overrides on top of it
        keys.remove("preset")
        parts.append(f"preset {config.get('preset')}")
        overrides = _preset_overrides(config, preset_defaults)
        if overrides is not None:
            keys = [k for k in keys if k in overrides]
    order = {k: i for i, k in enumerate(LABEL_NAMES)}
    keys.sort(key=lambda k: (k in NON_LEARNING_KEYS, order.get(k, len(order)), k))
    shown = keys[: max(0, LABEL_MAX_KEYS - len(parts))]
    parts += [f"{LABEL_NAMES.get(k, k)}={_fmt_value(config.get(k))}" for k in shown]
    if len(keys) > len(shown):
        parts.append(f"+{len(keys) - len(shown)} more")
    return ", ".join(parts)


def _differing_keys(groups: list[RunGroup]) -> list[str]:
    keys = sorted({k for g in groups for k in g.config} - {"env_id"})
    return [k for k in keys if len({json.dumps(g.config.get(k), sort_keys=True, default=str) for g in groups}) > 1]


def _seeds(counts: list[int]) -> str:
    lo, hi = min(counts), max(counts)
    n = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{n} seed" + ("" if hi == 1 else "s")


def group_labels(groups: list[RunGroup], preset_defaults: PresetDefaults | None = None) -> list[str]:
    """Legend labels naming each group by the config keys that differ among ``groups`` (short names)."""
    differing = _differing_keys(groups)
    labels = []
    for g in groups:
        if not g.config:
            name = g.runs[0].path.name
        elif differing:
            name = _config_name(g.config, differing, preset_defaults)
        else:
            name = g.env_id
        labels.append(f"{name} ({_seeds([len(g.runs)])})")
    return labels


def _legend_labels(groups: list[RunGroup], config_keys: list[str],
                   preset_defaults: PresetDefaults | None = None) -> dict[str, str]:
    """One label per config (it has one colour in every env's panel), naming what differs between configs."""
    by_key: dict[str, list[RunGroup]] = {}
    for g, key in zip(groups, config_keys, strict=True):
        by_key.setdefault(key, []).append(g)
    firsts = [gs[0] for gs in by_key.values()]
    differing = _differing_keys(firsts)
    labels = {}
    for key, gs in by_key.items():
        g = gs[0]
        name = (g.runs[0].path.name if not g.config else _config_name(g.config, differing, preset_defaults)) or g.env_id
        labels[key] = f"{name} ({_seeds([len(x.runs) for x in gs])})"
    return labels


def _si_ticks(x: float, _pos: int | None = None) -> str:
    """100000 -> 100k, 1500000 -> 1.5M: wide step counts otherwise run into each other."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def bootstrap_ci(
    values: np.ndarray,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and a percentile bootstrap band.

    ``values`` has shape (n_seeds, n_points), NaN where a seed has no data.
    Seeds are resampled with replacement. Returns (mean, lower, upper).
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    with warnings.catch_warnings():
        # all-NaN columns (no seed covers that x) legitimately give NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        idx = rng.integers(0, n, size=(n_resamples, n))
        boot = np.nanmean(values[idx], axis=1)
        alpha = (1.0 - confidence) / 2
        lower = np.nanquantile(boot, alpha, axis=0)
        upper = np.nanquantile(boot, 1 - alpha, axis=0)
    # Percentile bands can miss the sample mean by rounding (identical seeds) or heavy
    # skew; the band is meant to contain the plotted mean.
    return mean, np.fmin(lower, mean), np.fmax(upper, mean)


def _run_curve(run: Run, x_key: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    x = metric_series(run.records, x_key)
    y = metric_series(run.records, metric)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def group_curve(
    group: RunGroup, x_key: str, metric: str, points: int = GRID_POINTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Interpolate each seed onto a common grid; return (grid, mean, lower, upper)."""
    curves = [c for c in (_run_curve(r, x_key, metric) for r in group.runs) if len(c[0])]
    if not curves:
        return None
    lo = max(c[0][0] for c in curves)
    hi = min(c[0][-1] for c in curves)
    if hi <= lo:
        # seeds don't overlap (e.g. one was killed early): use the union, NaN outside each seed
        lo, hi = min(c[0][0] for c in curves), max(c[0][-1] for c in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    stacked = np.array([np.interp(grid, x, y, left=np.nan, right=np.nan) for x, y in curves])
    mean, lower, upper = bootstrap_ci(stacked)
    return grid, mean, lower, upper


def plot_runs(
    paths: list[str],
    output: str,
    x: str = "steps",
    metrics: list[str] | None = None,
    diagnostics: bool = False,
    preset_defaults: PresetDefaults | None = None,
) -> str:
    """Plot mean +/- 95% bootstrap band per config group, one column per env; return ``output``.

    `preset_defaults` lets legends name a preset and only the overrides on top of it."""
    if x not in X_KEYS:
        raise ValueError(f"x must be one of {sorted(X_KEYS)}, got {x!r}")
    suffix = Path(output).suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        raise ValueError(f"output must end in one of {', '.join(SUPPORTED_FORMATS)}: {output}")
    try:
        # imported here so the rest of ppox works without the optional [plot] extra;
        # the Agg canvas renders off-screen and leaves pyplot's global backend alone
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PPOXError("plotting needs matplotlib: pip install 'ppox[plot]'") from exc
    runs = load_runs(paths)
    if not runs:
        raise NoRunsError(f"no runs with {METRICS_FILE} matched: {' '.join(paths)}")

    metric_list = list(metrics) if metrics else [DEFAULT_METRIC]
    if diagnostics:
        metric_list += [m for m in DIAGNOSTIC_METRICS if m not in metric_list]
    groups = group_runs(runs)
    envs = list(dict.fromkeys(g.env_id for g in groups))
    x_key = X_KEYS[x]

    from matplotlib.ticker import FuncFormatter, MaxNLocator

    n_rows, n_cols = len(metric_list), len(envs)
    # the same config gets the same colour (and one legend entry) in every env's panel
    config_keys = [
        json.dumps({k: v for k, v in g.config.items() if k != "env_id"}, sort_keys=True, default=str)
        if g.config else group_key(g.runs[0])
        for g in groups
    ]
    palette = {key: f"C{i % 10}" for i, key in enumerate(dict.fromkeys(config_keys))}
    key_of = {id(g): key for g, key in zip(groups, config_keys, strict=True)}
    colours = {i: palette[key] for i, key in key_of.items()}
    legend = _legend_labels(groups, config_keys, preset_defaults) if len(palette) > 1 else {}
    legend_rows = math.ceil(len(legend) / 2)
    fig = Figure(figsize=(max(5.5 * n_cols, 6.0), 2.7 * n_rows + 0.5 + 0.3 * legend_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex="col")
    handles: dict[str, Any] = {}
    for col, env in enumerate(envs):
        env_groups = [g for g in groups if g.env_id == env]
        for row, metric in enumerate(metric_list):
            ax = axes[row][col]
            drew = False
            for g in env_groups:
                curve = group_curve(g, x_key, metric)
                if curve is None:
                    continue
                grid, mean, lower, upper = curve
                colour = colours[id(g)]
                (line,) = ax.plot(grid, mean, color=colour, lw=1.5, marker="o" if len(grid) == 1 else None)
                handles.setdefault(key_of[id(g)], line)
                if len(g.runs) > 1:  # one seed has no spread to show
                    ax.fill_between(grid, lower, upper, color=colour, alpha=0.2, lw=0)
                drew = True
            if not drew:
                ax.text(0.5, 0.5, f"no {metric} data", ha="center", va="center", transform=ax.transAxes)
            if row == 0:
                seeds = "" if legend else f" ({_seeds([len(g.runs) for g in env_groups])})"
                ax.set_title(env + seeds)
            if col == 0:
                ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            if row == n_rows - 1:
                ax.set_xlabel(X_LABELS[x])
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            if x == "steps":
                ax.xaxis.set_major_formatter(FuncFormatter(_si_ticks))
            ax.grid(alpha=0.3)
    if legend:
        keys = [k for k in legend if k in handles]
        fig.legend([handles[k] for k in keys], [legend[k] for k in keys], loc="outside lower center",
                   ncols=min(2, len(keys)), fontsize="small", frameon=False)
    counts = [len(g.runs) for g in groups]
    if max(counts) == 1:
        title = "one seed per curve (no confidence band)"
    elif min(counts) == 1:
        title = f"mean over seeds, {CONFIDENCE:.0%} bootstrap CI (no band for single-seed curves)"
    else:
        title = f"mean over seeds, {CONFIDENCE:.0%} bootstrap CI"
    fig.suptitle(title, fontsize="medium")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    return output


def plot_main(
    paths: list[str],
    output: str,
    x: str = "steps",
    metrics: list[str] | None = None,
    diagnostics: bool = False,
    preset_defaults: PresetDefaults | None = None,
) -> int:
    """CLI entry: plot and print the file path; 2 on no runs or bad arguments."""
    try:
        path = plot_runs(paths, output, x=x, metrics=metrics, diagnostics=diagnostics,
                         preset_defaults=preset_defaults)
    except (PPOXError, ValueError) as exc:  # includes NoRunsError
        print(f"ppox plot: {exc}", file=sys.stderr)
        return 2
    print(f"Saved plot to {path}")
    return 0
