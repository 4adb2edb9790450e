"""Per-iteration metrics to metrics.jsonl, TensorBoard and (--wandb) W&B: one write per iteration, no per-step sync."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ppox.io import open_append, write_all


class MetricsLogger:
    """Appends one JSON line per record to RUN_DIR/metrics.jsonl.

    The file is opened with O_NOFOLLOW (a symlink is refused, never written through); a fresh run
    (`append=False`) first replaces it with an empty file by an atomic rename instead of truncating
    whatever it points to. Each line goes out in one write() call, so a kill cannot interleave lines.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, append: bool = False,
                 wandb: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._fd: int | None = open_append(self.path, fresh=not append)
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import Summary

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
            self._summary = Summary
        if wandb is not None:  # ppox.tracking imports wandb: only when asked for
            from ppox.tracking import WandbRun

            try:
                self._wandb = WandbRun(self.run_dir, wandb, config, resume=append)
            except BaseException:
                self.close()
                raise

    def log(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: the logger is closed")
        write_all(self._fd, (json.dumps(record) + "\n").encode(), self.path)
        if self._tb is None and self._wandb is None:
            return
        step = int(record["global_step"])
        scalars = {_tb_tag(key): value for key, value in record.items()
                   if key not in ("global_step", "iteration") and value is not None
                   and isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))}
        if self._tb is not None:
            self._tb_scalars(scalars, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step)

    def _tb_scalars(self, scalars: dict[str, float], step: int) -> None:
        """All of an iteration's scalars as one TensorBoard event: what `add_scalar` writes per value (a
        float32 `simple_value` under its tag), in one Summary, so the writer thread serialises and writes one
        event per iteration instead of one per value (readers see the same scalars at the same step)."""
        summary = self._summary
        values = [summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
        self._tb._get_file_writer().add_summary(summary(value=values), step)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """After close(): hand the run's summary to W&B and close its run (idempotent; nothing without W&B)."""
        if self._wandb is not None:
            self._wandb.finish(summary)


def _tb_tag(key: str) -> str:
    if key.startswith("eval_"):
        return f"eval/{key}"
    if key.startswith("episodic_"):
        return f"charts/{key}"
    if key in ("learning_rate", "sps", "kl_coef", "wall_time", "env_restarts", "skipped_updates"):
        return f"charts/{key}"
    return f"losses/{key}"
