"""Robust reading of a run directory: metrics.jsonl and config.json."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


class MetricsReadWarning(UserWarning):
    """A line of metrics.jsonl could not be parsed and was skipped."""


@dataclass
class RunData:
    """Everything the diagnostics need from one run directory."""

    run_dir: Path
    records: list[dict[str, Any]]
    config: dict[str, Any] | None = None


def _metrics_path(path: str | Path) -> Path:
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read metrics.jsonl (a file or the run directory holding it).

    Python's json writes NaN/Infinity as bare tokens, which ``json.loads`` accepts.
    Unparsable lines (typically the last one, cut off when the trainer was killed)
    are skipped with a ``MetricsReadWarning``. Records are returned sorted by
    iteration; if an iteration appears twice (a resumed run re-logging the
    iterations after its last checkpoint) the later line wins.
    """
    path = _metrics_path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    last_nonempty = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    by_iteration: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: a hostile line nested 100k deep
            where = "truncated last line" if i == last_nonempty else f"line {i + 1}"
            warnings.warn(
                f"{path}: skipping unparsable {where}: {line[:60]!r}",
                MetricsReadWarning,
                stacklevel=2,
            )
            continue
        if not isinstance(record, dict):
            warnings.warn(
                f"{path}: skipping line {i + 1}: not a JSON object", MetricsReadWarning, stacklevel=2
            )
            continue
        iteration = record.get("iteration")
        if not isinstance(iteration, int):
            iteration = len(by_iteration) + 1
            record["iteration"] = iteration
        by_iteration.pop(iteration, None)
        by_iteration[iteration] = record
    return [by_iteration[k] for k in sorted(by_iteration)]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        warnings.warn(f"{path}: could not read ({reason}); ignoring it", MetricsReadWarning, stacklevel=3)
        return None
    return data if isinstance(data, dict) else None


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """Return config.json as a dict, or None if it is missing or unreadable."""
    return _read_json(Path(run_dir) / CONFIG_FILE)


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory. Raises FileNotFoundError if metrics.jsonl is missing."""
    run_dir = Path(run_dir)
    return RunData(
        run_dir=run_dir,
        records=read_metrics(run_dir / METRICS_FILE),
        config=read_config(run_dir),
    )


def to_float(value: Any) -> float:
    """Convert a metric value to float; None, missing and non-numbers become NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def record_iterations(records: list[dict[str, Any]]) -> np.ndarray:
    """Each record's iteration (its 1-based position where it has none), as ints."""
    return np.array([int(r.get("iteration", i + 1)) for i, r in enumerate(records)], dtype=int)


def metric_series(records: list[dict[str, Any]], key: str) -> np.ndarray:
    """The values of ``key``, one per record, as floats; missing/null values are NaN."""
    return np.array([to_float(r.get(key)) for r in records], dtype=float)
