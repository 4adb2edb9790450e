"""Trust-region doctor: spot common PPO pathologies in a run's metrics.

The checks follow the debugging list for unstable PPO training in the design
notes: numerical failure first, then the trust region (KL per update, clip
fraction), then exploration (entropy), the value function, and finally the
outcome (returns collapsing after a peak).
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppox.diagnostics.metrics_io import METRICS_FILE, MetricsReadWarning, load_run, metric_series, record_iterations

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


def _robust_noise(values: np.ndarray) -> float:
    """Per-sample noise scale from first differences (insensitive to slow trends and jumps)."""
    if len(values) < 3:
        return 0.0
    d = np.diff(values)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


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
    """The env's registered 'solved' return, if gymnasium knows one."""
    if not env_id:
        return None
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


@dataclass
class _Ctx:
    records: list[dict[str, Any]]
    config: dict[str, Any] | None
    iterations: np.ndarray

    @property
    def n(self) -> int:
        return len(self.records)

    def series(self, key: str) -> np.ndarray:
        return metric_series(self.records, key)


# --- checks -------------------------------------------------------------------


def _check_non_finite(ctx: _Ctx) -> list[Finding]:
    bad: dict[str, dict[str, list[int]]] = {}
    for i, record in enumerate(ctx.records):
        it = int(ctx.iterations[i])
        for key, value in record.items():
            if not isinstance(value, float) or math.isfinite(value):
                continue
            # explained variance is NaN by definition when returns have zero variance
            # (e.g. no reward yet); that is not a numerical failure.
            if key == "explained_variance" and math.isnan(value):
                continue
            kind = "NaN" if math.isnan(value) else "inf"
            bad.setdefault(key, {}).setdefault(kind, []).append(it)
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
    early, recent = float(np.median(kl[:w])), float(np.median(kl[-w:]))
    corr = _spearman(its.astype(float), kl)
    if not (corr >= KL_RISING_MIN_CORR and recent >= KL_RISING_MIN_LEVEL):
        return None
    if recent < KL_RISING_RATIO * max(early, 1e-8):
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
    initial = float(np.median(ent[ok][:3]))
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
    median = float(np.median(ev[ok]))
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
    non_finite = [
        int(ctx.iterations[i])
        for i, r in enumerate(ctx.records)
        if isinstance(r.get("value_loss"), float) and not math.isfinite(r["value_loss"])
    ]
    parts: list[str] = []
    iters: list[int] = list(non_finite)
    if ctx.n >= MIN_ITERS_FOR_TRENDS:
        we = _window(ctx.n, EARLY_WINDOW_FRACTION, EARLY_WINDOW_MIN)
        early = vl[:we][np.isfinite(vl[:we])]
        if len(early):
            ref = max(float(np.median(early)), VALUE_LOSS_MIN_REFERENCE)
            later = np.where(np.isfinite(vl[we:]), vl[we:], -np.inf)
            grown = later > VALUE_LOSS_GROWTH * ref
            if grown.any():
                its = ctx.iterations[we:][grown]
                imax = int(np.argmax(later))
                peak = float(later[imax])
                parts.append(
                    f"value_loss grew from an early median of {_fmt(float(np.median(early)))} "
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


def diagnose(records: list[dict[str, Any]], config: dict[str, Any] | None = None) -> list[Finding]:
    """Run all checks on a run's metric records; an empty list means healthy."""
    if not records:
        return []
    ctx = _Ctx(records=records, config=config, iterations=record_iterations(records))
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(ctx))
    if ctx.n < MIN_ITERS_FOR_TRENDS:
        findings.append(
            Finding(
                "short_run",
                "info",
                f"only {ctx.n} iterations; trend checks need at least {MIN_ITERS_FOR_TRENDS}",
            )
        )
    return findings


def diagnose_run(run_dir: str | Path) -> list[Finding]:
    """Read ``run_dir``'s metrics.jsonl (and config.json) and diagnose it."""
    run = load_run(run_dir)
    return diagnose(run.records, run.config)


def _is_problem(finding: Finding) -> bool:
    return finding.severity in ("error", "warning")


def format_findings(findings: list[Finding]) -> str:
    """Plain-text report of the findings."""
    problems = [f for f in findings if _is_problem(f)]
    notes = [f for f in findings if not _is_problem(f)]
    lines: list[str] = []
    if not problems:
        lines.append("Training looks healthy: no problems found.")
    else:
        s = "" if len(problems) == 1 else "s"
        lines.append(f"{len(problems)} problem{s} found:")
        for k, f in enumerate(problems, 1):
            lines.append(f"{k}. [{f.severity.upper()}] {f.code}: {f.message}")
            if f.advice:
                lines.append(f"   Advice: {f.advice}")
    for f in notes:
        lines.append(f"Note: {f.message}")
    return "\n".join(lines)


class LiveDoctor:
    """Run the checks during training and warn once per finding code."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []
        self.reported: set[str] = set()

    def update(self, record: dict[str, Any], check: bool = True) -> list[str]:
        """Add the latest iteration's record; return new one-line warnings (none when not `check`)."""
        record = dict(record)
        record.setdefault("iteration", len(self.records) + 1)
        self.records.append(record)
        if not check:
            return []
        # Re-running on all records is O(n) per call, negligible next to a PPO iteration.
        new: list[str] = []
        for f in diagnose(self.records, self.config):
            if not _is_problem(f) or f.code in self.reported:
                continue
            self.reported.add(f.code)
            new.append(f"[doctor] iteration {record['iteration']}: {f.severity}: {f.code}: {f.message}")
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
    if not problems:
        console.print("[green]Training looks healthy: no problems found.[/green]")
    else:
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
    """CLI entry: 0 healthy, 1 problems found, 2 unreadable run directory."""
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
    findings = diagnose(run.records, run.config)
    if not _print_rich(run_dir, findings):
        print(format_findings(findings))
    return 1 if any(_is_problem(f) for f in findings) else 0
