"""Trust-region doctor: spot common PPO pathologies in a run's metrics.

The checks follow the debugging list for unstable PPO training in the design
notes: numerical failure first, then the trust region (KL per update, clip
fraction), then exploration (entropy), the value function, and finally the
outcome (returns collapsing after a peak).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppox.diagnostics.metrics_io import (
    METRICS_FILE,
    MetricsReadWarning,
    load_run,
    metric_series,
    record_iterations,
    to_float,
)

# --- thresholds -------------------------------------------------------------
#: Trend checks (anything "persistent", "rising" or "collapsing") need this many iterations.
MIN_ITERS_FOR_TRENDS = 10
#: "Recent" window = last 25% of iterations, at least 5.
RECENT_WINDOW_FRACTION = 0.25
RECENT_WINDOW_MIN = 5
#: "Early" window = first 10% of iterations, at least 3.
EARLY_WINDOW_FRACTION = 0.1
EARLY_WINDOW_MIN = 3

#: approx_kl per update above this means the policy left the trust region.
KL_HIGH = 0.1
#: A single spike is noise; need max(2, 5% of iterations) above KL_HIGH.
KL_HIGH_MIN_COUNT = 2
KL_HIGH_MIN_FRACTION = 0.05
#: Rising KL: rank correlation with iteration, growth from early to recent median, and a floor
#: so that a rise from 0.001 to 0.004 is not reported.
KL_RISING_MIN_CORR = 0.6
KL_RISING_RATIO = 3.0
KL_RISING_MIN_LEVEL = 0.02

#: Clip fraction above this in more than half of the recent window.
CLIPFRAC_HIGH = 0.3
CLIPFRAC_MIN_FRACTION = 0.5

#: Entropy below 10% of its initial value within the first 25% of the planned run.
ENTROPY_COLLAPSE_RATIO = 0.1
ENTROPY_EARLY_FRACTION = 0.25
#: Returns count as "at their max" when within 10% of the return range of the best.
RETURN_AT_MAX_TOLERANCE = 0.1

#: Value loss above 100x its early median (the median is floored so that a near-zero
#: early loss, e.g. with sparse rewards, does not make every later value look huge).
VALUE_LOSS_GROWTH = 100.0
VALUE_LOSS_MIN_REFERENCE = 1e-2

#: Returns: smoothing window = 10% of the iterations with episodes, at least 3.
RETURN_WINDOW_FRACTION = 0.1
RETURN_WINDOW_MIN = 3
#: Collapse = last window below the best window by more than 50% of the range of window
#: means, and by more than 3 standard errors of a window mean (so noise alone can't trigger).
RETURN_DROP_FRACTION = 0.5
RETURN_DROP_MIN_SE = 3.0

#: Outcome: "learned" = the last window of training returns beats the first by more than 3 standard
#: errors of a window mean and by 5% of the first window's magnitude (so drift is not learning).
PROGRESS_MIN_SE = 3.0
PROGRESS_MIN_FRACTION = 0.05
#: Targets for envs gymnasium registers no reward_threshold for: ppox's own learning-test bar
#: (README: Pendulum-v1 eval >= -300).
FALLBACK_TARGETS = {"Pendulum-v1": -300.0}
SUMMARY_FILE = "summary.json"

SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    """One problem found in a run."""

    code: str
    severity: str  # "error", "warning" or "info"
    message: str
    iterations: list[int] = field(default_factory=list)
    advice: str = ""


# --- small helpers ----------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _fmt_iters(iters: Iterable[int], limit: int = 8) -> str:
    """Compress [1,2,3,7,9,10] to '1-3, 7, 9-10' (first `limit` runs only)."""
    iters = sorted({int(i) for i in iters})
    runs: list[str] = []
    start = prev = None
    for i in iters:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            runs.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = i
    if start is not None:
        runs.append(f"{start}-{prev}" if prev != start else f"{start}")
    if len(runs) > limit:
        return ", ".join(runs[:limit]) + f", ... ({len(iters)} in all)"
    return ", ".join(runs)


def _span(iters: np.ndarray) -> str:
    return f"{int(iters[0])}-{int(iters[-1])}" if len(iters) > 1 else f"{int(iters[0])}"


def _window(n: int, fraction: float, minimum: int) -> int:
    return max(1, min(n, max(minimum, round(n * fraction))))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.all(y == y[0]):
        return math.nan
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def _median(values: np.ndarray) -> float:
    """`float(np.median(values))` for a 1-d float array, the same value (NaN if any is NaN; the mean of the two
    middle values of an even count), at a fraction of np.median's cost on the short windows the checks use."""
    ordered = np.sort(values)  # NaN sorts last
    n = len(ordered)
    if n == 0 or math.isnan(ordered[-1]):
        return float(np.median(values))  # NaN (np.median's own, with its warning for an empty array)
    h = n // 2
    return float(ordered[h]) if n % 2 else float((ordered[h - 1] + ordered[h]) / 2)


def _robust_noise(values: np.ndarray) -> float:
    """Per-sample noise scale from first differences (insensitive to slow trends and jumps)."""
    if len(values) < 3:
        return 0.0
    d = np.diff(values)
    return float(1.4826 * _median(np.abs(d - _median(d))) / math.sqrt(2))


def _cfg(config: dict[str, Any] | None, key: str) -> Any:
    return None if config is None else config.get(key)


def _now(config: dict[str, Any] | None, key: str) -> str:
    value = _cfg(config, key)
    return f" (now {value})" if value is not None else ""


def planned_iterations(config: dict[str, Any] | None) -> int | None:
    """Number of iterations the config asks for, or None if it can't be told."""
    try:
        batch = int(config["num_envs"]) * int(config["num_steps"])  # type: ignore[index]
        total = int(config["total_timesteps"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    return total // batch if batch > 0 and total >= batch else None


@functools.lru_cache(maxsize=64)
def _reward_threshold(env_id: str | None) -> float | None:
    """The env's registered 'solved' return, if gymnasium knows one, else ppox's FALLBACK_TARGETS."""
    if not env_id:
        return None
    if env_id in FALLBACK_TARGETS:
        return FALLBACK_TARGETS[env_id]
    try:
        import gymnasium
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            threshold = gymnasium.spec(env_id).reward_threshold
    except gymnasium.error.Error:  # unknown or deprecated env id: fall back to the run's own best
        return None
    return float(threshold) if threshold is not None else None


def _threshold_source(env_id: str | None) -> str:
    if env_id in FALLBACK_TARGETS:
        return f"ppox's target for {env_id}, which gymnasium registers no threshold for"
    return f"{env_id}'s reward threshold"


class _Table:
    """A run's records as columns, computed once, so that replaying the checks on every prefix of
    the run (what the live doctor saw) costs array slices rather than a pass over the records.
    `append` adds a record in O(columns) (the live doctor's table grows with the run instead of
    being rebuilt at every check)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self._iterations = record_iterations(records)
        # key -> values of the records so far; the arrays grow by doubling, so only [:len(records)] is data
        self._columns: dict[str, np.ndarray] = {}
        # (record index, key, "NaN"/"inf") for every non-finite float, in record order
        self.non_finite: list[tuple[int, str, str]] = []
        for i, record in enumerate(records):
            self._add_non_finite(i, record)

    def _add_non_finite(self, i: int, record: dict[str, Any]) -> None:
        self.non_finite.extend((i, key, "NaN" if math.isnan(value) else "inf") for key, value in record.items()
                               if isinstance(value, float) and not math.isfinite(value))

    @property
    def iterations(self) -> np.ndarray:
        return self._iterations[: len(self.records)]

    def column(self, key: str) -> np.ndarray:
        if key not in self._columns:
            self._columns[key] = metric_series(self.records, key)
        return self._columns[key][: len(self.records)]

    def append(self, record: dict[str, Any]) -> None:
        """Add one record to `records` (the list given at construction) and to every column built so far."""
        i = len(self.records)
        self.records.append(record)
        self._iterations = _room_for(self._iterations, i)
        self._iterations[i] = int(record.get("iteration", i + 1))
        for key, values in self._columns.items():
            values = self._columns[key] = _room_for(values, i)
            values[i] = to_float(record.get(key))
        self._add_non_finite(i, record)


def _room_for(values: np.ndarray, i: int) -> np.ndarray:
    """`values`, or a copy twice its size, so that index i exists (amortised O(1) appends)."""
    if i < len(values):
        return values
    grown = np.empty(max(2 * len(values), 16), dtype=values.dtype)
    grown[:i] = values[:i]
    return grown


@dataclass
class _Ctx:
    table: _Table
    n: int  # the checks see the first n records
    config: dict[str, Any] | None
    summary: dict[str, Any] | None = None

    @property
    def iterations(self) -> np.ndarray:
        return self.table.iterations[: self.n]

    def series(self, key: str) -> np.ndarray:
        return self.table.column(key)[: self.n]

    def non_finite(self) -> list[tuple[int, str, str]]:
        return [entry for entry in self.table.non_finite if entry[0] < self.n]


# --- checks -------------------------------------------------------------------


def _check_non_finite(ctx: _Ctx) -> list[Finding]:
    bad: dict[str, dict[str, list[int]]] = {}
    for i, key, kind in ctx.non_finite():
        # explained variance is NaN by definition when returns have zero variance
        # (e.g. no reward yet); that is not a numerical failure.
        if key == "explained_variance" and kind == "NaN":
            continue
        bad.setdefault(key, {}).setdefault(kind, []).append(int(ctx.iterations[i]))
    if not bad:
        return []
    parts = []
    all_iters: set[int] = set()
    for key, kinds in bad.items():
        for kind, iters in kinds.items():
            noun = "iteration" if len(iters) == 1 else "iterations"
            parts.append(f"{key} is {kind} at {noun} {_fmt_iters(iters)}")
            all_iters.update(iters)
    first = min(all_iters)
    return [
        Finding(
            code="non_finite",
            severity="error",
            message=f"non-finite values (first at iteration {first}): " + "; ".join(parts),
            iterations=sorted(all_iters),
            advice=(
                f"Look at what happened just before iteration {first}: usually the value loss "
                "or the probability ratio overflowed. Normalise advantages per minibatch, lower "
                f"the learning rate{_now(ctx.config, 'learning_rate')}, turn on reward "
                "normalisation/clipping, clip gradients, and check the environment for NaN/inf "
                "observations or rewards."
            ),
        )
    ]


def _kl_advice(config: dict[str, Any] | None) -> str:
    target = _cfg(config, "target_kl")
    target_tip = (
        f"lower target_kl (now {target})"
        if target is not None
        else "set target_kl (e.g. 0.015) to stop the epochs early"
    )
    return (
        "The policy moves too far per update. First check advantages are normalised per "
        f"minibatch; then lower learning_rate{_now(config, 'learning_rate')} to about 1e-4, "
        f"use fewer update_epochs{_now(config, 'update_epochs')}, e.g. 3-4, a smaller "
        f"clip_coef{_now(config, 'clip_coef')} such as 0.1, and {target_tip}."
    )


def _kl_rising(ctx: _Ctx) -> tuple[str, np.ndarray] | None:
    """Return (description, recent iterations) if approx_kl trends upward."""
    if ctx.n < MIN_ITERS_FOR_TRENDS:
        return None
    kl = ctx.series("approx_kl")
    ok = np.isfinite(kl)
    its, kl = ctx.iterations[ok], kl[ok]
    if len(kl) < MIN_ITERS_FOR_TRENDS:
        return None
    w = _window(len(kl), RECENT_WINDOW_FRACTION, RECENT_WINDOW_MIN)
    early, recent = _median(kl[:w]), _median(kl[-w:])
    # the rank correlation (the costly part) only where the cheap conditions hold; all three must
    if not recent >= KL_RISING_MIN_LEVEL or recent < KL_RISING_RATIO * max(early, 1e-8):
        return None
    corr = _spearman(its.astype(float), kl)
    if not corr >= KL_RISING_MIN_CORR:
        return None
    text = (
        f"approx_kl is rising: median {_fmt(early)} in iterations {_span(its[:w])}, "
        f"{_fmt(recent)} in iterations {_span(its[-w:])} (rank correlation with iteration {corr:.2f})"
    )
    return text, its[-w:]


def _check_kl(ctx: _Ctx) -> list[Finding]:
    kl = ctx.series("approx_kl")
    ok = np.isfinite(kl)
    if not ok.any():
        return []
    above = ok & (np.nan_to_num(kl, nan=-np.inf) > KL_HIGH)
    count, n_ok = int(above.sum()), int(ok.sum())
    rising = _kl_rising(ctx)
    if count >= max(KL_HIGH_MIN_COUNT, math.ceil(KL_HIGH_MIN_FRACTION * n_ok)):
        imax = int(np.nanargmax(np.where(ok, kl, np.nan)))
        message = (
            f"approx_kl exceeded {KL_HIGH} in {count} of {n_ok} iterations "
            f"(max {_fmt(kl[imax])} at iteration {int(ctx.iterations[imax])}); "
            f"iterations {_fmt_iters(ctx.iterations[above])}"
        )
        if rising is not None:
            message += f"; it is also trending up ({rising[0].split(': ', 1)[1]})"
        return [
            Finding(
                "kl_high", "warning", message, [int(i) for i in ctx.iterations[above]], _kl_advice(ctx.config)
            )
        ]
    if rising is not None:
        return [
            Finding("kl_rising", "warning", rising[0], [int(i) for i in rising[1]], _kl_advice(ctx.config))
        ]
    return []


def _check_clipfrac(ctx: _Ctx) -> list[Finding]:
    if ctx.n < MIN_ITERS_FOR_TRENDS:
        return []
    w = _window(ctx.n, RECENT_WINDOW_FRACTION, RECENT_WINDOW_MIN)
    cf, its = ctx.series("clipfrac")[-w:], ctx.iterations[-w:]
    ok = np.isfinite(cf)
    if ok.sum() < RECENT_WINDOW_MIN:
        return []
    high = ok & (np.nan_to_num(cf, nan=-np.inf) > CLIPFRAC_HIGH)
    if high.sum() <= CLIPFRAC_MIN_FRACTION * ok.sum():
        return []
    imax = int(np.nanargmax(cf))
    message = (
        f"clipfrac above {CLIPFRAC_HIGH} in {int(high.sum())} of the last {int(ok.sum())} iterations "
        f"({_span(its)}; median {_fmt(float(np.nanmedian(cf)))}, max {_fmt(cf[imax])} at iteration {int(its[imax])})"
    )
    advice = (
        "Most samples hit the clip boundary, so the later epochs barely carry gradient and the "
        f"policy is pushed against the trust region. Lower learning_rate{_now(ctx.config, 'learning_rate')}, "
        f"use fewer update_epochs{_now(ctx.config, 'update_epochs')} or a larger batch, or set target_kl. "
        "(Shrinking clip_coef alone raises clipfrac; only do it together with a lower learning rate.)"
    )
    return [Finding("clipfrac_high", "warning", message, [int(i) for i in its[high]], advice)]


def _rolling_mean(values: np.ndarray, w: int) -> np.ndarray:
    return np.convolve(values, np.ones(w) / w, mode="valid")


def _check_entropy(ctx: _Ctx) -> list[Finding]:
    if ctx.n < MIN_ITERS_FOR_TRENDS:
        return []
    ent = ctx.series("entropy")
    ok = np.isfinite(ent)
    if ok.sum() < 3:
        return []
    initial = _median(ent[ok][:3])
    # A relative threshold means nothing for a negative entropy (continuous actions with a
    # small std); skip rather than guess.
    if initial <= 0:
        return []
    run_len = max(planned_iterations(ctx.config) or 0, ctx.n)
    early_limit = math.ceil(ENTROPY_EARLY_FRACTION * run_len)
    first_iter = int(ctx.iterations[0])
    low = ok & (np.nan_to_num(ent, nan=np.inf) < ENTROPY_COLLAPSE_RATIO * initial)
    low &= (ctx.iterations - first_iter) < early_limit
    if not low.any():
        return []
    k = int(np.argmax(low))
    it = int(ctx.iterations[k])

    # Only a problem if the policy committed before it was good. The returns from the
    # collapse on show what the near-deterministic policy achieves; compare them with the
    # env's "solved" threshold, else with the best the run ever reached.
    ret = ctx.series("episodic_return_mean")
    after = ret[k:][np.isfinite(ret[k:])][:RETURN_WINDOW_MIN]
    ret_at = float(after.mean()) if len(after) else math.nan
    threshold = _reward_threshold(_cfg(ctx.config, "env_id"))
    valid = ret[np.isfinite(ret)]
    returns_note = ""
    if not math.isnan(ret_at):
        if threshold is not None:
            if ret_at >= threshold:
                return []
            returns_note = (
                f"; mean return then was {_fmt(ret_at)}, below the env's solved threshold {_fmt(threshold)}"
            )
        elif len(valid) >= RETURN_WINDOW_MIN:
            smooth = _rolling_mean(valid, min(RETURN_WINDOW_MIN, len(valid)))
            best, worst = float(smooth.max()), float(smooth.min())
            if best > worst and ret_at >= best - RETURN_AT_MAX_TOLERANCE * (best - worst):
                return []
            returns_note = f"; mean return then was {_fmt(ret_at)} vs a best of {_fmt(best)}"
    message = (
        f"entropy fell to {_fmt(ent[k])} (below {ENTROPY_COLLAPSE_RATIO:.0%} of its initial {_fmt(initial)}) "
        f"at iteration {it}, within the first {ENTROPY_EARLY_FRACTION:.0%} of the run "
        f"(iterations {first_iter}-{first_iter + early_limit - 1} of {run_len}){returns_note}"
    )
    advice = (
        "The policy became nearly deterministic before it learned the task, so it stops exploring. "
        f"Increase ent_coef{_now(ctx.config, 'ent_coef')} to about 0.01, lower "
        f"learning_rate{_now(ctx.config, 'learning_rate')}, and use fewer update_epochs."
    )
    return [Finding("entropy_collapse", "warning", message, [it], advice)]


def _check_explained_variance(ctx: _Ctx) -> list[Finding]:
    if ctx.n < MIN_ITERS_FOR_TRENDS:
        return []
    w = _window(ctx.n, RECENT_WINDOW_FRACTION, RECENT_WINDOW_MIN)
    ev, its = ctx.series("explained_variance")[-w:], ctx.iterations[-w:]
    ok = np.isfinite(ev)
    if ok.sum() < RECENT_WINDOW_MIN:
        return []
    median = _median(ev[ok])
    if median > 0:
        return []
    bad = ok & (np.nan_to_num(ev, nan=np.inf) <= 0)
    message = (
        f"explained_variance <= 0 in {int(bad.sum())} of the last {int(ok.sum())} iterations "
        f"({_span(its)}; median {_fmt(median)}): the value function predicts returns no better than a constant"
    )
    norm_tip = "" if _cfg(ctx.config, "norm_reward") else ", and turn on reward normalisation (norm_reward)"
    advice = (
        "The value function is not fitted, so advantages are mostly noise. Train it more "
        "(more update_epochs or a larger value-loss coefficient), use a separate value network "
        f"instead of a shared trunk{norm_tip}."
    )
    return [Finding("explained_variance_low", "warning", message, [int(i) for i in its[bad]], advice)]


def _check_value_loss(ctx: _Ctx) -> list[Finding]:
    vl = ctx.series("value_loss")
    non_finite = [int(ctx.iterations[i]) for i, key, _ in ctx.non_finite() if key == "value_loss"]
    parts: list[str] = []
    iters: list[int] = list(non_finite)
    if ctx.n >= MIN_ITERS_FOR_TRENDS:
        we = _window(ctx.n, EARLY_WINDOW_FRACTION, EARLY_WINDOW_MIN)
        early = vl[:we][np.isfinite(vl[:we])]
        if len(early):
            ref = max(_median(early), VALUE_LOSS_MIN_REFERENCE)
            later = np.where(np.isfinite(vl[we:]), vl[we:], -np.inf)
            grown = later > VALUE_LOSS_GROWTH * ref
            if grown.any():
                its = ctx.iterations[we:][grown]
                imax = int(np.argmax(later))
                peak = float(later[imax])
                parts.append(
                    f"value_loss grew from an early median of {_fmt(_median(early))} "
                    f"(iterations {_span(ctx.iterations[:we])}) to {_fmt(peak)} at iteration "
                    f"{int(ctx.iterations[we + imax])} ({_fmt(peak / ref)}x); above {VALUE_LOSS_GROWTH:g}x "
                    f"in {len(its)} iterations ({_fmt_iters(its)})"
                )
                iters.extend(int(i) for i in its)
    if non_finite:
        noun = "iteration" if len(non_finite) == 1 else "iterations"
        parts.append(f"value_loss is non-finite at {noun} {_fmt_iters(non_finite)}")
    if not parts:
        return []
    norm_tip = (
        "scale rewards down further"
        if _cfg(ctx.config, "norm_reward")
        else "turn on reward normalisation (norm_reward)"
    )
    advice = (
        f"Value targets are growing or the critic diverges: {norm_tip}, enable value-loss clipping, lower "
        f"learning_rate{_now(ctx.config, 'learning_rate')}, and clip gradients."
    )
    severity = "error" if non_finite else "warning"
    return [Finding("value_loss_exploding", severity, "; ".join(parts), sorted(set(iters)), advice)]


def _check_return_collapse(ctx: _Ctx) -> list[Finding]:
    ret = ctx.series("episodic_return_mean")
    ok = np.isfinite(ret)
    values, its = ret[ok], ctx.iterations[ok]
    n = len(values)
    if n < MIN_ITERS_FOR_TRENDS:
        return []
    w = _window(n, RETURN_WINDOW_FRACTION, RETURN_WINDOW_MIN)
    smooth = _rolling_mean(values, w)
    j = int(np.argmax(smooth))
    best, last, worst = float(smooth[j]), float(smooth[-1]), float(smooth.min())
    drop = best - last
    # the peak window must end before the last window starts, else it's the same data
    if j + w > n - w or best <= worst:
        return []
    se = _robust_noise(values) / math.sqrt(w)
    if drop <= RETURN_DROP_FRACTION * (best - worst) or drop <= RETURN_DROP_MIN_SE * se:
        return []
    # nothing collapses that never rose: on flat, noisy returns the "peak" is noise too
    if best - float(smooth[0]) <= RETURN_DROP_MIN_SE * se:
        return []
    peak_its, last_its = its[j : j + w], its[-w:]
    message = (
        f"mean return peaked at {_fmt(best)} (iterations {_span(peak_its)}) but the last {w} "
        f"iterations with episodes ({_span(last_its)}) average {_fmt(last)}: a drop of {_fmt(drop)}, "
        f"{drop / (best - worst):.0%} of the range {_fmt(worst)}..{_fmt(best)}"
    )
    advice = (
        "Late updates destroyed a good policy. Anneal the learning rate, set target_kl, lower "
        "clip_coef/update_epochs, use a larger batch, and keep checkpoints so the best policy "
        "can be recovered."
    )
    return [
        Finding(
            "return_collapse",
            "warning",
            message,
            [int(i) for i in peak_its] + [int(i) for i in last_its],
            advice,
        )
    ]


def _window_means(ctx: _Ctx) -> tuple[float, float, float, np.ndarray, np.ndarray] | None:
    """(first-window mean, last-window mean, noise of a window mean, first its, last its) of the
    training returns, or None when there are too few iterations with episodes to tell a trend."""
    ret = ctx.series("episodic_return_mean")
    ok = np.isfinite(ret)
    values, its = ret[ok], ctx.iterations[ok]
    if len(values) < MIN_ITERS_FOR_TRENDS:
        return None
    w = _window(len(values), RETURN_WINDOW_FRACTION, RETURN_WINDOW_MIN)
    se = _robust_noise(values) / math.sqrt(w)
    return float(values[:w].mean()), float(values[-w:].mean()), se, its[:w], its[-w:]


def _final_return(ctx: _Ctx) -> tuple[float, str] | None:
    """The run's final return and what it is: the end-of-run evaluation when summary.json has one,
    else the mean training return of the last window."""
    summary = ctx.summary or {}
    ev = summary.get("eval_return_mean")
    if isinstance(ev, (int, float)) and not isinstance(ev, bool) and math.isfinite(ev):
        episodes = summary.get("eval_episodes")
        return float(ev), f"eval return {_fmt(ev)}" + (f" over {episodes} episodes" if episodes else "")
    ret = ctx.series("episodic_return_mean")
    ok = np.isfinite(ret)
    if not ok.any():
        return None
    values, its = ret[ok], ctx.iterations[ok]
    w = _window(len(values), RETURN_WINDOW_FRACTION, RETURN_WINDOW_MIN)
    return float(values[-w:].mean()), f"training return {_fmt(values[-w:].mean())} (iterations {_span(its[-w:])})"


def _outcome(ctx: _Ctx, collapsed: bool) -> Finding | None:
    """Did the run learn, and did it solve the env? Judged once, at the end of a run: during
    training every run is "not solved yet", which is no warning."""
    env_id = _cfg(ctx.config, "env_id")
    threshold = _reward_threshold(env_id)
    final = _final_return(ctx)
    if final is None:
        return None
    value, what = final
    trend = _window_means(ctx)
    progress = ""
    learned: bool | None = None
    if trend is not None:
        early, late, se, early_its, late_its = trend
        gain = late - early
        learned = gain > PROGRESS_MIN_SE * se and gain > PROGRESS_MIN_FRACTION * abs(early)
        progress = (
            f"training returns went from {_fmt(early)} (iterations {_span(early_its)}) "
            f"to {_fmt(late)} (iterations {_span(late_its)})"
        )
    if threshold is not None and value >= threshold:
        return Finding(
            "solved", "info", f"solved: {what} >= {_fmt(threshold)} ({_threshold_source(env_id)})"
        )
    advice_common = (
        "Compare with the env's preset (`ppox presets`), train longer (--total-timesteps), and run a "
        "few seeds: one unlucky seed is not a verdict."
    )
    if learned is False and not collapsed:  # a collapse already says "learned, then lost it"
        target = f"; {what} is below {_fmt(threshold)} ({_threshold_source(env_id)})" if threshold is not None else ""
        return Finding(
            "not_learned",
            "warning",
            f"the run did not learn: {progress}, no better than noise{target}",
            advice=(
                "Check that the reward signal reaches the agent (reward scale, --norm-reward), that "
                f"learning_rate{_now(ctx.config, 'learning_rate')} is neither tiny nor huge, and the "
                "other findings. " + advice_common
            ),
        )
    if threshold is not None:
        learning = f"; it is learning: {progress}" if learned else (f"; {progress}" if progress else "")
        return Finding(
            "not_solved",
            "warning",
            f"not solved: {what} is below {_fmt(threshold)} ({_threshold_source(env_id)}){learning}",
            advice=advice_common,
        )
    return None  # learning, and no threshold to judge "solved" by


#: Checks in reporting order.
CHECKS: tuple[Callable[[_Ctx], list[Finding]], ...] = (
    _check_non_finite,
    _check_kl,
    _check_clipfrac,
    _check_entropy,
    _check_explained_variance,
    _check_value_loss,
    _check_return_collapse,
)


def _run_checks(ctx: _Ctx) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(ctx))
    return findings


def live_check_every(num_iterations: int) -> int:
    """How often the live doctor checks (PPO.learn: every this many iterations, and at the last):
    at most ~100 checks per run bounds its cost. The post-hoc replay uses the same schedule."""
    return max(1, num_iterations // 100)


def _live_checkpoints(n: int, config: dict[str, Any] | None) -> list[int]:
    """The prefix lengths the live doctor checked: every `live_check_every` iterations and the last."""
    planned = planned_iterations(config) or n
    every = live_check_every(planned)
    return sorted({k for k in range(every, n + 1, every)} | {min(n, planned)} | {n})


def _is_problem(finding: Finding) -> bool:
    return finding.severity in ("error", "warning")


def diagnose(
    records: list[dict[str, Any]],
    config: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    history: bool = True,
) -> list[Finding]:
    """Run all checks on a run's metric records; no "error"/"warning" finding means healthy.

    The trend checks are the ones the live doctor runs during training. With ``history`` they are
    also replayed on the prefixes the live doctor checked, so a problem it warned about that no
    longer holds at the end is reported as a note (the two never disagree). The outcome (solved /
    learning / not learned) comes from ``summary`` (summary.json's eval return) or the last
    training returns; on a solved run every warning says so.
    """
    if not records:
        return []
    table = _Table(records)
    ctx = _Ctx(table=table, n=len(records), config=config, summary=summary)
    findings = _run_checks(ctx)
    codes = {f.code for f in findings if _is_problem(f)}
    outcome = _outcome(ctx, collapsed="return_collapse" in codes)
    if outcome is not None and outcome.code == "solved":
        for f in findings:
            if f.severity == "warning":
                f.message += f" (the run is solved nonetheless: {outcome.message.removeprefix('solved: ')})"
    if outcome is not None:
        findings.append(outcome)
    if history:
        seen: set[str] = set()
        for k in _live_checkpoints(len(records), config)[:-1]:
            for f in _run_checks(_Ctx(table=table, n=k, config=config)):
                if not _is_problem(f) or f.code in codes or f.code in seen:
                    continue
                seen.add(f.code)
                findings.append(
                    Finding(
                        f.code,
                        "info",
                        f"{f.code} held at iteration {int(table.iterations[k - 1])} (the live doctor warned then) "
                        f"but no longer at the end: {f.message}",
                        f.iterations,
                    )
                )
    if ctx.n < MIN_ITERS_FOR_TRENDS:
        findings.append(
            Finding(
                "short_run",
                "info",
                f"only {ctx.n} iterations; trend checks need at least {MIN_ITERS_FOR_TRENDS}",
            )
        )
    return findings


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """summary.json of a finished run, or None (missing, unreadable: the training returns stand in)."""
    try:
        data = json.loads((Path(run_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or UTF-8; RecursionError: nested deep
        return None
    return data if isinstance(data, dict) else None


def diagnose_run(run_dir: str | Path) -> list[Finding]:
    """Read ``run_dir``'s metrics.jsonl (and config.json, summary.json) and diagnose it."""
    run = load_run(run_dir)
    return diagnose(run.records, run.config, read_summary(run_dir))


def _solved(findings: list[Finding]) -> bool:
    return any(f.code == "solved" for f in findings)


def exit_code(findings: list[Finding]) -> int:
    """0 healthy, or solved with warnings only (they say so); 1 an error, or warnings on an unsolved run."""
    if any(f.severity == "error" for f in findings):
        return 1
    return 0 if _solved(findings) or not any(_is_problem(f) for f in findings) else 1


def _headline(findings: list[Finding]) -> str:
    problems = [f for f in findings if _is_problem(f)]
    if not problems:
        return "Training looks healthy: no problems found."
    s = "" if len(problems) == 1 else "s"
    if exit_code(findings) == 0:
        return f"The run is solved; {len(problems)} warning{s} worth a look:"
    return f"{len(problems)} problem{s} found:"


def format_findings(findings: list[Finding]) -> str:
    """Plain-text report of the findings."""
    problems = [f for f in findings if _is_problem(f)]
    notes = [f for f in findings if not _is_problem(f)]
    lines = [_headline(findings)]
    for k, f in enumerate(problems, 1):
        lines.append(f"{k}. [{f.severity.upper()}] {f.code}: {f.message}")
        if f.advice:
            lines.append(f"   Advice: {f.advice}")
    for f in notes:
        lines.append(f"Note: {f.message}")
    return "\n".join(lines)


class LiveDoctor:
    """Run the checks during training and warn once per finding code.

    The same trend checks as ``ppox doctor`` (which replays them on the same iterations), without
    the outcome: a run is judged solved or not once it has ended. A warned problem that stops
    holding gets a "resolved" line (and a "holds again" line if it comes back), so the last line
    about a problem always says whether it holds.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []
        self._table = _Table(self.records)  # grows with self.records: a check slices columns, rebuilds nothing
        self.reported: set[str] = set()
        self.active: set[str] = set()

    def update(self, record: dict[str, Any], check: bool = True) -> list[str]:
        """Add the latest iteration's record; return new one-line warnings (none when not `check`)."""
        record = dict(record)
        record.setdefault("iteration", len(self.records) + 1)
        self._table.append(record)  # appends to self.records
        if not check:
            return []
        ctx = _Ctx(table=self._table, n=len(self.records), config=self.config)
        found = {f.code: f for f in _run_checks(ctx) if _is_problem(f)}
        prefix = f"[doctor] iteration {record['iteration']}"
        new = [f"{prefix}: resolved: {code} no longer holds" for code in sorted(self.active - found.keys())]
        for f in found.values():
            if f.code not in self.reported:
                self.reported.add(f.code)
                new.append(f"{prefix}: {f.severity}: {f.code}: {f.message}")
            elif f.code not in self.active:  # it came back after a "resolved" line: say so, briefly
                new.append(f"{prefix}: {f.severity}: {f.code} holds again")
        self.active = set(found)
        return new


def _print_rich(run_dir: str, findings: list[Finding]) -> bool:
    try:
        from rich.console import Console
        from rich.markup import escape
    except ImportError:
        return False
    console = Console()
    problems = [f for f in findings if _is_problem(f)]
    console.print(f"[bold]ppox doctor[/bold]: {escape(run_dir)}")
    headline = escape(_headline(findings))
    console.print(f"[green]{headline}[/green]" if exit_code(findings) == 0 else headline)
    colour = {"error": "red", "warning": "yellow"}
    for k, f in enumerate(problems, 1):
        c = colour[f.severity]
        console.print(
            f"{k}. [bold {c}]{f.severity.upper()}[/bold {c}] [bold]{f.code}[/bold]: {escape(f.message)}"
        )
        if f.advice:
            console.print(f"   [dim]Advice:[/dim] {escape(f.advice)}")
    for f in findings:
        if not _is_problem(f):
            console.print(f"[dim]Note: {escape(f.message)}[/dim]")
    return True


def doctor_main(run_dir: str) -> int:
    """CLI entry: 0 healthy (or solved, warnings said), 1 problems found, 2 unreadable run directory."""
    path = Path(run_dir)
    if not path.is_dir():
        print(f"ppox doctor: run directory not found: {run_dir}", file=sys.stderr)
        return 2
    if not (path / METRICS_FILE).is_file():
        print(f"ppox doctor: no {METRICS_FILE} in {run_dir}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricsReadWarning)
        run = load_run(path)
    for w in caught:
        print(f"ppox doctor: warning: {w.message}", file=sys.stderr)
    if not run.records:
        print(f"ppox doctor: {path / METRICS_FILE} has no metric records", file=sys.stderr)
        return 2
    findings = diagnose(run.records, run.config, read_summary(path))
    if not _print_rich(run_dir, findings):
        print(format_findings(findings))
    return exit_code(findings)
