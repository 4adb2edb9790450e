"""Training diagnostics: the trust-region doctor and learning-curve plots."""

from __future__ import annotations

from typing import Any

from ppox.diagnostics.doctor import (
    Finding,
    LiveDoctor,
    diagnose,
    diagnose_run,
    doctor_main,
    format_findings,
)
from ppox.diagnostics.metrics_io import load_run, read_config, read_metrics

_PLOT_NAMES = ("plot_runs", "plot_main", "bootstrap_ci", "group_runs")

__all__ = [
    "Finding",
    "LiveDoctor",
    "bootstrap_ci",
    "diagnose",
    "diagnose_run",
    "doctor_main",
    "format_findings",
    "group_runs",
    "load_run",
    "plot_main",
    "plot_runs",
    "read_config",
    "read_metrics",
]


def __getattr__(name: str) -> Any:
    # plot pulls in matplotlib; load it only when asked so the trainer's LiveDoctor stays light
    if name in _PLOT_NAMES:
        from ppox.diagnostics import plot

        return getattr(plot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
